"""Which limits apply to an authenticated request (SPEC §11), pure.

A key's own rate and quota; its account's, shared by all of the account's keys; and a route's
default rate or quota for a key that sets none of that kind itself. Each is a `Limit` whose
counters live in the slot of the record it belongs to (`gw:key:ID`, `gw:account:ID`), so on a
Redis Cluster one key's counters never span slots.

Records hold limits as text ("100/s", "10000/month"): they are parsed once per distinct text
and kept, so the request path builds its list from cached values.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from gateway.limits.leases import Limit, Settings
from gateway.limits.policy import (
    PolicyError,
    Quota,
    QuotaPeriod,
    Rate,
    parse_quota,
    parse_rate,
)

KEY_SCOPE = "gw:key:"
ACCOUNT_SCOPE = "gw:account:"


class Limited(Protocol):
    """What a key, an account or a route carries (text as stored)."""

    @property
    def rate(self) -> str | None: ...

    @property
    def burst(self) -> int | None: ...

    @property
    def quota(self) -> str | None: ...


class _NoLimits:
    rate: str | None = None
    burst: int | None = None
    quota: str | None = None


NO_LIMITS: Limited = _NoLimits()  # a record that sets none (an account gone, no route)


@lru_cache(maxsize=4096)
def rate_rule(text: str, burst: int | None) -> Rate | None:
    try:
        return parse_rate(text, burst)
    except PolicyError:
        return None  # stored by hand or by a newer version: ignored rather than a 500


@lru_cache(maxsize=4096)
def quota_rule(text: str) -> Quota | None:
    try:
        return parse_quota(text)
    except PolicyError:
        return None


def _rules(record: Limited) -> tuple[Rate | None, Quota | None]:
    rate = rate_rule(record.rate, record.burst) if record.rate else None
    quota = quota_rule(record.quota) if record.quota else None
    return rate, quota


# (key id, route name) -> (key, account, route, limits): the records a list was built from,
# compared by identity. The key cache hands out the same record objects until a change
# replaces them, so a request finds its list without building one (Limit objects, rule
# lookups: 7 µs, against 0.3 µs for this).
_BUILT: dict[tuple[str, str], tuple[object, object, object, tuple[Limit, ...]]] = {}
MAX_BUILT = 100_000


def applied_limits(key_id: str, key: Limited, account_id: str, account: Limited,
                   route_name: str, route: Limited) -> tuple[Limit, ...]:
    """Every limit on this request, named as the RateLimit fields name them."""
    if not (key.rate or key.quota or account.rate or account.quota or route.rate
            or route.quota):
        return ()
    built = _BUILT.get((key_id, route_name))
    if built is not None and built[0] is key and built[1] is account and built[2] is route:
        return built[3]
    limits = _build(key_id, key, account_id, account, route_name, route)
    if len(_BUILT) >= MAX_BUILT:
        _BUILT.clear()
    _BUILT[(key_id, route_name)] = (key, account, route, limits)
    return limits


def _build(key_id: str, key: Limited, account_id: str, account: Limited,
           route_name: str, route: Limited) -> tuple[Limit, ...]:
    limits: list[Limit] = []
    key_scope = KEY_SCOPE + key_id
    rate, quota = _rules(key)
    route_rate, route_quota = _rules(route)
    if rate is not None:
        limits.append(Limit("key", key_scope, rate))
    elif route_rate is not None:
        # A route default is the key's own on that route: a bucket per key and route.
        limits.append(Limit("route", key_scope, route_rate, variant=route_name))
    if quota is not None:
        limits.append(Limit("key-quota", key_scope, quota))
    elif route_quota is not None:
        limits.append(Limit("route-quota", key_scope, route_quota, variant=route_name))
    account_rate, account_quota = _rules(account)
    account_scope = ACCOUNT_SCOPE + account_id
    if account_rate is not None:
        limits.append(Limit("account", account_scope, account_rate))
    if account_quota is not None:
        limits.append(Limit("account-quota", account_scope, account_quota))
    return tuple(limits)


def limit_settings(fail_open: tuple[str, ...]) -> Settings:
    """The limiter's settings from the config's `limits` section (periods that fail open)."""
    periods: tuple[QuotaPeriod, ...] = ("day", "month", "total")
    return Settings(fail_open=tuple((period, period in fail_open) for period in periods))
