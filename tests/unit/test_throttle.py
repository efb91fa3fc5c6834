"""Brute-force protection, the parts that need no store: who the client is, the local limit,
windows, blocks and their bounds (gateway.auth.throttle), on an injected clock. The Redis client
is never used here (nothing is flushed); tests/integration/test_throttle.py shares counts."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.auth.throttle import (
    COUNTED_CODES,
    FailureThrottle,
    client_address,
    refusal,
    retry_after_header,
)
from gateway.config import BruteForceConfig, IPNetwork
from gateway.errors import STATUS_BY_CODE
from gateway.store.client import connect

Make = Callable[..., FailureThrottle]
T0 = 1_699_999_200.0  # a window boundary for any window that divides an hour
CLIENT = "203.0.113.7"


class Clock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(clock: Clock) -> Callable[..., FailureThrottle]:
    # A client that is never connected: these tests never flush.
    redis = connect("redis://127.0.0.1:1", 0.1)

    def build(max_failures: int = 5, window: float = 60.0, block_for: float = 30.0,
              max_tracked: int = 1000) -> FailureThrottle:
        return FailureThrottle(redis, BruteForceConfig(max_failures, window, block_for), clock,
                               max_tracked=max_tracked)

    return build


# -- client_address -------------------------------------------------------------------------------

NONE: tuple[IPNetwork, ...] = ()
PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "expected"),
    [
        pytest.param(CLIENT, [], NONE, CLIENT, id="peer"),
        pytest.param(CLIENT, ["198.51.100.9"], NONE, CLIENT, id="no-trusted-proxies:xff-ignored"),
        pytest.param(CLIENT, ["198.51.100.9"], PROXIES, CLIENT, id="untrusted-peer:xff-ignored"),
        pytest.param("10.0.0.5", ["198.51.100.9"], PROXIES, "198.51.100.9", id="behind-proxy"),
        pytest.param("10.0.0.5", ["6.6.6.6, 198.51.100.9"], PROXIES, "198.51.100.9",
                     id="spoofed-left-part-ignored"),
        pytest.param("10.0.0.5", ["198.51.100.9, 10.0.0.7"], PROXIES, "198.51.100.9",
                     id="chain-of-trusted-proxies"),
        pytest.param("10.0.0.5", ["6.6.6.6", "198.51.100.9, 10.0.0.7"], PROXIES, "198.51.100.9",
                     id="several-headers"),
        pytest.param("10.0.0.5", ["198.51.100.9,10.0.0.7 ,  "], PROXIES, "198.51.100.9",
                     id="spaces-and-empty-entries"),
        pytest.param("10.0.0.5", ["10.1.1.1, 10.0.0.7"], PROXIES, "10.1.1.1",
                     id="every-hop-trusted:leftmost"),
        pytest.param("10.0.0.5", [], PROXIES, "10.0.0.5", id="trusted-peer-without-xff"),
        pytest.param("10.0.0.5", [" , "], PROXIES, "10.0.0.5", id="trusted-peer-empty-xff"),
        pytest.param("10.0.0.5", ["198.51.100.9:4711"], PROXIES, "198.51.100.9",
                     id="xff-entry-with-port"),
        pytest.param("10.0.0.5", ["[2001:db8:1:2::9]:443"], PROXIES, "2001:db8:1:2::/64",
                     id="xff-bracketed-v6-with-port"),
        pytest.param("10.0.0.5", ["198.51.100.9, 10.0.0.7:80"], PROXIES, "198.51.100.9",
                     id="trusted-hop-with-port-skipped"),
        pytest.param("10.0.0.5", ["198.51.100.9, unknown"], PROXIES, "unknown",
                     id="unparsable-rightmost-entry-kept-as-text"),
        pytest.param("10.0.0.5", ["x" * 500], PROXIES, "x" * 64, id="unparsable-entry-bounded"),
        pytest.param("2001:db8:1:2:aaaa::1", [], NONE, "2001:db8:1:2::/64", id="v6-per-64"),
        pytest.param("2001:db8:1:2:bbbb::7", [], NONE, "2001:db8:1:2::/64",
                     id="v6-same-64-same-client"),
        pytest.param("2001:db8:1:3::1", [], NONE, "2001:db8:1:3::/64", id="v6-other-64"),
        pytest.param("::ffff:203.0.113.7", [], NONE, CLIENT, id="v4-mapped-peer"),
        pytest.param("::ffff:10.0.0.5", ["198.51.100.9"], PROXIES, "198.51.100.9",
                     id="v4-mapped-trusted-peer"),
        pytest.param("2001:db8:ffff::1", ["198.51.100.9"], PROXIES, "198.51.100.9",
                     id="v6-trusted-peer"),
        pytest.param("10.0.0.5", ["::ffff:198.51.100.9"], PROXIES, "198.51.100.9",
                     id="v4-mapped-xff-entry"),
        pytest.param(None, ["198.51.100.9"], PROXIES, "unknown", id="no-peer"),
        pytest.param("", [], NONE, "unknown", id="empty-peer"),
    ],
)
def test_client_address(peer: str | None, forwarded_for: list[str],
                        trusted: tuple[IPNetwork, ...], expected: str) -> None:
    assert client_address(peer, forwarded_for, trusted) == expected


# -- what counts, and the answer ------------------------------------------------------------------


def test_counted_codes_are_wrong_credentials_only() -> None:
    # Every counted code is a 401 the gateway can answer; a missing credential is not counted
    # (nor is any 403, 429 or 503, which the 401-only check already rules out).
    assert {STATUS_BY_CODE[code] for code in COUNTED_CODES} == {401}
    unauthenticated = {code for code, status in STATUS_BY_CODE.items() if status == 401}
    assert unauthenticated - COUNTED_CODES == {"missing_credentials"}


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60"), (60.0, "60"),
     (3600.2, "3601")],
)
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


def test_refusal_is_429_with_retry_after() -> None:
    refused = refusal(12.3)
    assert (refused.status, refused.code) == (429, "too_many_requests")
    assert refused.headers == {"Retry-After": "13"}


# -- the local limit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_failures", "failures", "blocked"),
    [
        (5, 4, False),
        (5, 5, True),
        (5, 50, True),
        (1, 1, True),
        (2, 1, False),
        (0, 1000, False),  # turned off
    ],
)
def test_local_limit(make: Make, max_failures: int, failures: int, blocked: bool) -> None:
    throttle = make(max_failures=max_failures)
    for attempt in range(failures):
        # The check before each attempt: refused from the one after the limit-th failure.
        allowed = max_failures == 0 or attempt < max_failures
        assert (throttle.retry_after(CLIENT) is None) is allowed
        throttle.record_failure(CLIENT)
    assert (throttle.retry_after(CLIENT) is not None) is blocked
    assert throttle.retry_after("198.51.100.1") is None  # other clients are not affected


@pytest.mark.parametrize(
    ("failures_at", "blocked"),
    [
        pytest.param([0, 1, 2, 3, 59.9], True, id="five-in-one-window"),
        pytest.param([0, 1, 2, 3, 60], False, id="fifth-opens-a-new-window"),
        pytest.param([0, 1, 60, 61, 62, 63], False, id="four-in-the-second-window"),
        pytest.param([0, 60, 61, 62, 63, 64], True, id="five-in-the-second-window"),
        # Windows are aligned on the clock, not on an address's first failure.
        pytest.param([50, 55, 58, 59, 61], False, id="aligned-on-the-clock"),
        pytest.param([50, 55, 58, 59, 59.99], True, id="aligned-on-the-clock-same-window"),
    ],
)
def test_failures_count_per_window(make: Make, clock: Clock, failures_at: list[float],
                                   blocked: bool) -> None:
    throttle = make(max_failures=5, window=60.0)
    for at in failures_at:
        clock.now = T0 + at
        throttle.record_failure(CLIENT)
    assert (throttle.retry_after(CLIENT) is not None) is blocked


def test_a_block_lasts_block_for_then_ends(make: Make, clock: Clock) -> None:
    throttle = make(max_failures=3, block_for=30.0)
    for _ in range(3):
        throttle.record_failure(CLIENT)
    assert throttle.retry_after(CLIENT) == pytest.approx(30.0)
    clock.now = T0 + 20
    assert throttle.retry_after(CLIENT) == pytest.approx(10.0)
    clock.now = T0 + 30
    assert throttle.retry_after(CLIENT) is None
    assert throttle.sizes[2] == 0  # the ended block is forgotten


def test_refusals_are_counted_in_the_metric(make: Make) -> None:
    """The 429 answers, not the checks: a blocked address may still pass with a key its
    worker holds as valid (issue 17, item 3)."""
    name = "gateway_auth_throttled_total"
    before = REGISTRY.get_sample_value(name) or 0.0
    throttle = make(max_failures=1)
    assert throttle.retry_after(CLIENT) is None
    throttle.record_failure(CLIENT)
    for _ in range(3):
        assert throttle.retry_after(CLIENT) is not None
    assert REGISTRY.get_sample_value(name) == before
    for _ in range(3):
        refusal(10.0)
    assert REGISTRY.get_sample_value(name) == before + 3


def test_turning_it_off_on_reload_lifts_blocks(make: Make) -> None:
    throttle = make(max_failures=1)
    throttle.record_failure(CLIENT)
    assert throttle.retry_after(CLIENT) is not None
    throttle.config = BruteForceConfig(max_failures=0)
    assert throttle.retry_after(CLIENT) is None
    throttle.record_failure("198.51.100.1")
    throttle.apply_block("198.51.100.2", T0 + 60)
    assert throttle.sizes == (1, 1, 1)  # nothing new was counted or blocked


def test_a_lower_limit_on_reload_applies_to_the_next_failure(make: Make) -> None:
    throttle = make(max_failures=10)
    for _ in range(4):
        throttle.record_failure(CLIENT)
    throttle.config = BruteForceConfig(max_failures=5)
    assert throttle.retry_after(CLIENT) is None
    throttle.record_failure(CLIENT)
    assert throttle.retry_after(CLIENT) is not None


# -- blocks announced by other workers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        pytest.param([60.0], 60.0, id="one"),
        pytest.param([60.0, 30.0], 60.0, id="a-shorter-one-does-not-shorten"),
        pytest.param([30.0, 60.0], 60.0, id="a-longer-one-extends"),
        pytest.param([-1.0], None, id="already-over"),
        pytest.param([0.0], None, id="ending-now"),
    ],
)
def test_apply_block(make: Make, blocks: list[float], expected: float | None) -> None:
    throttle = make()
    for seconds in blocks:
        throttle.apply_block(CLIENT, T0 + seconds)
    assert throttle.retry_after(CLIENT) == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(
    ("payload", "blocked"),
    [
        pytest.param(orjson.dumps({"client": CLIENT, "until_ms": int((T0 + 60) * 1000)}), True,
                     id="valid"),
        pytest.param(orjson.dumps({"client": CLIENT, "until_ms": (T0 + 60) * 1000}), True,
                     id="float-until"),
        pytest.param(orjson.dumps({"client": CLIENT, "until_ms": int((T0 - 1) * 1000)}), False,
                     id="over"),
        pytest.param(b"not json", False, id="not-json"),
        pytest.param(b"[]", False, id="not-an-object"),
        pytest.param(orjson.dumps({"client": CLIENT}), False, id="no-until"),
        pytest.param(orjson.dumps({"until_ms": int(T0 * 1000) + 60_000}), False, id="no-client"),
        pytest.param(orjson.dumps({"client": 7, "until_ms": int(T0 * 1000) + 60_000}), False,
                     id="client-not-text"),
        pytest.param(orjson.dumps({"client": "", "until_ms": int(T0 * 1000) + 60_000}), False,
                     id="client-empty"),
        pytest.param(orjson.dumps({"client": CLIENT, "until_ms": "soon"}), False,
                     id="until-not-a-number"),
        pytest.param(orjson.dumps({"client": CLIENT, "until_ms": True}), False,
                     id="until-boolean"),
    ],
)
def test_handle_message(make: Make, payload: bytes, blocked: bool) -> None:
    throttle = make()
    throttle.handle_message(payload)  # never raises
    assert (throttle.retry_after(CLIENT) is not None) is blocked


# -- bounded memory -------------------------------------------------------------------------------


def test_a_flood_from_many_addresses_is_bounded(make: Make) -> None:
    throttle = make(max_failures=2, max_tracked=100)
    for index in range(10_000):
        address = str(ipaddress.IPv4Address(0x0A000000 + index))
        throttle.record_failure(address)
        throttle.record_failure(address)  # blocked too
    counted, unsent, blocked = throttle.sizes
    assert (counted, unsent, blocked) == (100, 100, 100)
    # The most recent are kept, the oldest evicted.
    assert throttle.retry_after(str(ipaddress.IPv4Address(0x0A000000 + 9_999))) is not None
    assert throttle.retry_after(str(ipaddress.IPv4Address(0x0A000000))) is None


@pytest.mark.parametrize(
    ("others", "blocked"),
    [
        pytest.param(10, True, id="still-tracked"),
        pytest.param(200, False, id="evicted-and-forgotten"),
    ],
)
def test_eviction_forgets_the_least_recently_failed(make: Make, others: int, blocked: bool) -> None:
    throttle = make(max_failures=3, max_tracked=100)
    throttle.record_failure(CLIENT)
    throttle.record_failure(CLIENT)
    for index in range(others):
        throttle.record_failure(f"198.51.{index // 256}.{index % 256}")
    throttle.record_failure(CLIENT)
    assert (throttle.retry_after(CLIENT) is not None) is blocked


def test_prune_forgets_ended_windows_and_blocks(make: Make, clock: Clock) -> None:
    throttle = make(max_failures=2, window=60.0, block_for=30.0)
    throttle.record_failure(CLIENT)
    throttle.record_failure(CLIENT)  # blocked until +30
    clock.now = T0 + 10
    throttle.record_failure("198.51.100.1")  # counted until +70
    throttle.apply_block("198.51.100.2", T0 + 100)
    throttle.prune()
    assert throttle.sizes == (2, 2, 2)
    clock.now = T0 + 60
    throttle.prune()
    assert throttle.sizes == (1, 1, 1)  # CLIENT's window and block are over
    clock.now = T0 + 100
    throttle.prune()
    assert throttle.sizes == (0, 0, 0)
