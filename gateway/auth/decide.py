"""The authorization decision (SPEC §3): request facts and records in, Allow or Deny out.

Pure and synchronous, so every outcome is a row in a table of test cases. The order of checks is
the SPEC's: key exists -> secret matches -> not expired -> account enabled and holding
api_access -> scopes. (Credential syntax was checked before the store was asked.)
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import RouteConfig
from gateway.keys.model import Account, KeyRecord


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a call per field, per request
class Allow:
    key: KeyRecord
    account: Account


@dataclass(frozen=True, slots=True)
class Deny:
    code: str
    message: str


Decision = Allow | Deny


def scope_covers(granted: str, required: str) -> bool:
    """`yc.ai.*` covers every scope under `yc.ai.`; `*` covers everything."""
    if granted == required or granted == "*":
        return True
    return granted.endswith(".*") and required.startswith(granted[:-1])


def missing_scopes(granted: Iterable[str], required: Iterable[str]) -> list[str]:
    held = tuple(granted)
    return [need for need in required if not any(scope_covers(g, need) for g in held)]


@functools.lru_cache(maxsize=4096)
def _missing(granted: tuple[str, ...], required: tuple[str, ...]) -> tuple[str, ...]:
    # Keys and routes are few, requests many: each pair is worked out once per worker.
    return tuple(missing_scopes(granted, required))


def method_accepted(route: RouteConfig, method: str) -> Deny | None:
    if method in route.auth:
        return None
    kind = "API keys" if method == "api_key" else "signed requests"
    return Deny("invalid_credentials", f"route {route.name!r} does not accept {kind}")


def secret_matches(key: KeyRecord, presented_hash: str, now: float) -> bool:
    if hmac.compare_digest(key.secret_hash, presented_hash):
        return True
    return (key.previous_hash is not None and key.previous_until is not None
            and now < key.previous_until
            and hmac.compare_digest(key.previous_hash, presented_hash))


def decide(*, method: str, route: RouteConfig, key: KeyRecord | None, account: Account | None,
           now: float, presented_hash: str | None = None,
           check_scopes: bool = True) -> Decision:
    """`check_scopes=False` stops before the scopes: for a signed request the signature, time
    window and nonce come first (SPEC §3), then `scope_decision`."""
    denied = method_accepted(route, method)
    if denied:
        return denied
    if key is None or key.type != method:
        return Deny("invalid_credentials", "unknown key")
    if presented_hash is not None and not secret_matches(key, presented_hash, now):
        return Deny("invalid_credentials", "unknown key")
    if key.expires_at is not None and now >= key.expires_at:
        return Deny("expired_key", "the key has expired")
    if account is None:
        return Deny("invalid_credentials", "the key's account no longer exists")
    if not account.enabled:
        return Deny("account_disabled", "the key's account is disabled")
    if not account.api_access:
        return Deny("api_access_denied", "the key's account does not hold the api_access right")
    if not check_scopes:
        return Allow(key=key, account=account)
    return scope_decision(Allow(key=key, account=account), route)


def scope_decision(allowed: Allow, route: RouteConfig) -> Decision:
    missing = _missing(allowed.key.scopes, route.scopes)
    if missing:
        return Deny("insufficient_scope", "the key lacks the scopes: " + " ".join(missing))
    return allowed
