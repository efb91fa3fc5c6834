"""The per-worker key cache (SPEC §7), shown by counting the real Redis server's commands,
stopping it, restarting it, and running two gateway processes on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.auth.apikey import hash_secret, new_secret
from gateway.keys.cache import KeyCache
from gateway.keys.store import KeyStore
from tests.conftest import api_key, make_config, new_key, service_for
from tests.support.processes import GatewayProcess, write_config

VISION = "yc.ai.vision.execute"
PROPAGATION_LIMIT = 1.0  # SPEC §7: a change reaches every worker within one second


def vision_route(upstream: Any) -> list[dict[str, Any]]:
    return [{"name": "vision", "prefix": "/vision/", "upstream":
             f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]}]


def command_calls(server: Any, command: str) -> int:
    return server.command_stats().get(command, 0)


async def status(http: aiohttp.ClientSession, url: str, secret: str) -> tuple[int, str]:
    async with http.get(url, headers=api_key(secret)) as response:
        body = await response.json()
        return response.status, (body.get("error") or {}).get("code", "")


async def wait_for_status(http: aiohttp.ClientSession, url: str, secret: str, expected: int,
                          limit: float = PROPAGATION_LIMIT) -> float:
    """Poll until the gateway answers `expected`; return how long that took."""
    started = time.monotonic()
    while True:
        got, _ = await status(http, url, secret)
        elapsed = time.monotonic() - started
        if got == expected:
            return elapsed
        assert elapsed < limit, f"still {got} after {elapsed:.2f}s (wanted {expected})"
        await asyncio.sleep(0.02)


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    # Last-use flushes are pushed far out so that they do not show up in command counts; so is
    # the brute-force counter (its own test shows it costs far less than a command per failure).
    return await start_gateway(make_config(redis_clean.url, vision_route(upstream),
                                           keys={"last_used_flush": "60s"},
                                           brute_force={"max_failures": 0}))


async def test_malformed_keys_are_refused_without_any_store_command(gateway, redis_clean,
                                                                    key_service, http) -> None:
    _, secret, _ = await new_key(key_service, (VISION,))
    bad_checksum = secret[:10] + ("B" if secret[10] != "B" else "C") + secret[11:]
    malformed = ["gwk_", "gwk_" + "x" * 36, "nope", bad_checksum, secret + "0", secret[:-1]]
    before = redis_clean.command_count()
    for value in malformed * 10:
        assert await status(http, gateway.url + "/vision/x", value) == (401,
                                                                         "invalid_credentials")
    assert redis_clean.command_count() == before


async def test_warm_requests_cost_no_redis_round_trip(gateway, redis_clean, key_service,
                                                      http) -> None:
    _, secret, _ = await new_key(key_service, (VISION,))
    assert (await status(http, gateway.url + "/vision/x", secret))[0] == 200  # cold: fills
    before = redis_clean.command_count()
    for _ in range(200):
        assert (await status(http, gateway.url + "/vision/x", secret))[0] == 200
    assert redis_clean.command_count() == before


async def test_unknown_keys_are_cached_negatively_for_a_while(redis_clean, upstream,
                                                              start_gateway, http) -> None:
    gateway = await start_gateway(make_config(
        redis_clean.url, vision_route(upstream),
        keys={"last_used_flush": "60s", "negative_cache_ttl": "0.5s"}))
    unknown = new_secret()
    gets = command_calls(redis_clean, "get")
    assert await status(http, gateway.url + "/vision/x", unknown) == (401,
                                                                       "invalid_credentials")
    assert command_calls(redis_clean, "get") == gets + 1  # one lookup: no such secret
    for _ in range(20):
        assert (await status(http, gateway.url + "/vision/x", unknown))[0] == 401
    assert command_calls(redis_clean, "get") == gets + 1  # served from the negative cache
    assert gateway.running.cache.stats().negative_hits == 20
    await asyncio.sleep(0.6)
    assert (await status(http, gateway.url + "/vision/x", unknown))[0] == 401
    assert command_calls(redis_clean, "get") == gets + 2  # expired: asked again


async def test_the_negative_cache_is_bounded(redis_clean) -> None:
    from gateway.config import KeysConfig
    from gateway.store.client import connect

    redis = connect(redis_clean.url, 1.0)
    try:
        cache = KeyCache(KeyStore(redis), KeysConfig(), max_negative=50)
        for _ in range(500):
            assert await cache.api_key(hash_secret(new_secret())) == (None, None)
        assert cache.sizes[2] == 50
    finally:
        await redis.aclose()


async def test_concurrent_misses_share_one_store_lookup(gateway, redis_clean, key_service,
                                                        http) -> None:
    _, secret, _ = await new_key(key_service, (VISION,))
    gets = command_calls(redis_clean, "get")
    results = await asyncio.gather(*[status(http, gateway.url + "/vision/x", secret)
                                     for _ in range(50)])
    assert all(code == 200 for code, _ in results)
    # secret -> key id, key record, account record: three GETs for fifty requests.
    assert command_calls(redis_clean, "get") - gets == 3


async def _delete(service: Any, key: Any, account: Any) -> None:
    await service.delete_key(key.id)


async def _expire(service: Any, key: Any, account: Any) -> None:
    await service.set_expiry(key.id, time.time() + 0.2)


async def _reissue(service: Any, key: Any, account: Any) -> None:
    await service.reissue_key(key.id)


async def _disable(service: Any, key: Any, account: Any) -> None:
    await service.update_account(account.id, enabled=False)


async def _revoke_access(service: Any, key: Any, account: Any) -> None:
    await service.update_account(account.id, api_access=False)


@pytest.mark.parametrize(("change", "expected_status", "expected_code"), [
    (_delete, 401, "invalid_credentials"),
    (_expire, 401, "expired_key"),
    (_reissue, 401, "invalid_credentials"),
    (_disable, 403, "account_disabled"),
    (_revoke_access, 403, "api_access_denied"),
], ids=["delete", "expiry", "reissue", "disable-account", "revoke-api-access"])
async def test_changes_reach_a_warm_cache_within_a_second(
        gateway, key_service, http,
        change: Callable[[Any, Any, Any], Awaitable[None]],
        expected_status: int, expected_code: str) -> None:
    key, secret, account = await new_key(key_service, (VISION,))
    url = gateway.url + "/vision/x"
    for _ in range(3):
        assert (await status(http, url, secret))[0] == 200  # warm, served from memory
    await change(key_service, key, account)
    await wait_for_status(http, url, secret, expected_status, limit=PROPAGATION_LIMIT)
    assert await status(http, url, secret) == (expected_status, expected_code)


async def test_a_reissued_key_works_with_its_new_secret(gateway, key_service, http) -> None:
    key, old, _ = await new_key(key_service, (VISION,))
    url = gateway.url + "/vision/x"
    assert (await status(http, url, old))[0] == 200
    changed, new = await key_service.reissue_key(key.id)
    assert changed.id == key.id and changed.scopes == key.scopes
    assert (await status(http, url, new))[0] == 200
    await wait_for_status(http, url, old, 401)


async def test_a_lost_subscription_drops_the_cache(gateway, redis_clean, key_service,
                                                   http) -> None:
    key, secret, _ = await new_key(key_service, (VISION,))
    url = gateway.url + "/vision/x"
    assert (await status(http, url, secret))[0] == 200
    client = redis_clean.client()
    # Remove the key behind the gateway's back, with no invalidation message: a warm cache
    # keeps serving it (this is what the cache is for, and what makes the next step mean
    # something)...
    client.delete(f"gw:key:{key.id}", f"gw:secret:{hash_secret(secret)}")
    for _ in range(5):
        assert (await status(http, url, secret))[0] == 200
    # ...until the subscription is lost: then nothing cached is trusted without a re-read.
    assert client.client_kill_filter(_type="pubsub") >= 1
    await wait_for_status(http, url, secret, 401, limit=PROPAGATION_LIMIT)


async def test_store_outage_serves_cached_keys_then_503_and_recovers(persistent_redis,
                                                                     upstream, start_gateway,
                                                                     http) -> None:
    stale_limit = 1.5
    service, redis = await service_for(persistent_redis.url)
    try:
        _, cached, _ = await new_key(service, (VISION,))
        _, never_seen, _ = await new_key(service, (VISION,))
    finally:
        await redis.aclose()
    gateway = await start_gateway(make_config(
        persistent_redis.url, vision_route(upstream),
        keys={"stale_if_error": f"{stale_limit}s", "last_used_flush": "60s"}))
    url = gateway.url + "/vision/x"
    assert (await status(http, url, cached))[0] == 200

    persistent_redis.stop()
    # The cached key keeps working; a key never seen gets 503, never a 401 or 403.
    assert await status(http, url, cached) == (200, "")
    async with http.get(url, headers=api_key(never_seen)) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "key_store_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
    # The stale window runs from the gateway's first failed lookup, which was at the latest
    # the one just answered (not from the stop: a slow request in between moves it later).
    outage_noticed = time.monotonic()
    assert (await status(http, url, new_secret()))[0] == 503
    # Past stale_if_error, the cached key is refused too: 503 again, not 401.
    await asyncio.sleep(max(0.0, stale_limit + 0.2 - (time.monotonic() - outage_noticed)))
    assert await status(http, url, cached) == (503, "key_store_unavailable")

    persistent_redis.start()
    # Service resumes by itself, for both keys, with no restart of the gateway.
    await wait_for_status(http, url, cached, 200, limit=5.0)
    await wait_for_status(http, url, never_seen, 200, limit=5.0)
    await wait_for_status(http, url, new_secret(), 401, limit=5.0)


async def test_two_gateway_processes_see_a_deletion_within_a_second(tmp_path, redis_clean,
                                                                    upstream,
                                                                    key_service) -> None:
    gateways = []
    for name in ("a", "b"):
        path, port, admin_port = write_config(tmp_path / f"{name}.yaml", redis_clean.url,
                                              vision_route(upstream))
        gateways.append(GatewayProcess(path, port, admin_port).start())
    try:
        key, secret, _ = await new_key(key_service, (VISION,))
        async with aiohttp.ClientSession() as http:
            for gateway in gateways:
                for _ in range(3):
                    assert (await status(http, gateway.url + "/vision/x", secret))[0] == 200
            await key_service.delete_key(key.id)
            started = time.monotonic()
            elapsed = await asyncio.gather(*[
                wait_for_status(http, g.url + "/vision/x", secret, 401) for g in gateways])
            print(f"deletion seen by both processes after {time.monotonic() - started:.3f}s "
                  f"({', '.join(f'{e:.3f}s' for e in elapsed)})")
    finally:
        for gateway in gateways:
            assert gateway.stop() == 0, gateway.log()


async def test_the_no_await_reads_answer_only_when_key_and_account_are_fresh(
        redis_clean, key_service) -> None:
    from gateway.config import KeysConfig
    from gateway.store.client import connect

    key, secret, account = await new_key(key_service, (VISION,))
    now = [1000.0]
    redis = connect(redis_clean.url, 1.0)
    try:
        cache = KeyCache(KeyStore(redis), KeysConfig(), clock=lambda: now[0])
        token = hash_secret(secret)
        assert cache.api_key_now(token) is None  # nothing cached yet
        assert cache.key_by_id_now(key.id) is None
        looked_up = await cache.api_key(token)
        assert looked_up[0] is not None and looked_up[0].id == key.id
        assert cache.api_key_now(token) == looked_up
        assert cache.key_by_id_now(key.id) is None  # cached under its secret only
        await cache.key_by_id(key.id)
        assert cache.key_by_id_now(key.id) == looked_up
        cache.invalidate_account(account.id)  # the key is still cached, its account is not
        assert cache.api_key_now(token) is None
        await cache.api_key(token)
        assert cache.api_key_now(token) == looked_up
        now[0] += KeysConfig().cache_ttl  # both stale
        assert cache.api_key_now(token) is None
        assert cache.key_by_id_now(key.id) is None
        cache.drop_all()
        assert cache.api_key_now(token) is None
    finally:
        await redis.aclose()
