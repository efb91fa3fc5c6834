"""Which limits apply to a request (SPEC §11), pure: from what a key record, its account
record and the route carry, to the `Limit`s `LimitSync.check` takes.

- the key's own rate, else the route's default rate (a bucket per key and route);
- the key's quota;
- the account's rate and quota, shared by all its keys (buckets in the account's slot).

Records keep their limits as text, in the CLI's words (`{"rate": "100/s", "burst": 20,
"quota": "10000/month"}`), parsed once: `limits_for` is cached, so a request of a known key
gets the same `Limit` objects again (the lease table compares them by identity first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.limits.local import Limit
from gateway.limits.policy import PolicyError, Quota, Rate, parse_quota, parse_rate

KEY_SCOPE = "gw:key:"  # the record names of gateway/keys/layout.py: counters share their slot
ACCOUNT_SCOPE = "gw:account:"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limits one record carries (either may be absent)."""

    rate: Rate | None = None
    quota: Quota | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON form stored in a record (empty when there is nothing to store)."""
        data: dict[str, Any] = {}
        if self.rate is not None:
            text = str(self.rate).partition(" burst ")[0]
            data["rate"] = text
            if self.rate.burst != self.rate.limit:
                data["burst"] = self.rate.burst
        if self.quota is not None:
            data["quota"] = str(self.quota)
        return data

    @classmethod
    def from_record(cls, data: Mapping[str, Any] | None) -> LimitSpec:
        """The spec a record's JSON holds; raises PolicyError naming the bad field."""
        if not data:
            return NONE
        rate = quota = None
        if data.get("rate") is not None:
            try:
                rate = parse_rate(data["rate"], data.get("burst"))
            except PolicyError as exc:
                raise PolicyError(f"rate: {exc}") from None
        if data.get("quota") is not None:
            try:
                quota = parse_quota(str(data["quota"]))
            except PolicyError as exc:
                raise PolicyError(f"quota: {exc}") from None
        return cls(rate, quota)


NONE = LimitSpec()


@lru_cache(maxsize=65_536)
def limits_for(key_id: str, account_id: str, key: LimitSpec = NONE,
               account: LimitSpec = NONE, route: str = "",
               route_rate: Rate | None = None) -> tuple[Limit, ...]:
    """The limits of one request, in the order their policies appear in RateLimit-Policy."""
    key_scope = KEY_SCOPE + key_id
    account_scope = ACCOUNT_SCOPE + account_id
    limits = []
    if key.rate is not None:
        limits.append(Limit("key", key_scope, key.rate))
    elif route_rate is not None:
        limits.append(Limit("route", key_scope, route_rate, variant=f"route:{route}"))
    if key.quota is not None:
        limits.append(Limit("key-quota", key_scope, key.quota))
    if account.rate is not None:
        limits.append(Limit("account", account_scope, account.rate))
    if account.quota is not None:
        limits.append(Limit("account-quota", account_scope, account.quota))
    return tuple(limits)
