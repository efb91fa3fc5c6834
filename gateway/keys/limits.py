"""Changes to the limits a key or an account carries (SPEC §11): checked, and written in the
canonical text the records hold ("100/s", "10000/month"), by gateway/limits/policy's rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.keys.model import UNSET, _Unset
from gateway.limits import policy


@dataclass(frozen=True, slots=True)
class LimitChanges:
    """Limits to set on a key or an account: UNSET leaves one as it is, None removes it."""

    rate: str | _Unset | None = UNSET
    burst: int | _Unset | None = UNSET
    quota: str | _Unset | None = UNSET


def _rate(text: Any) -> str:
    return str(policy.parse_rate(text))


def _burst(count: Any) -> int:
    return policy.rate_of(1, 1.0, count).burst


def _quota(text: Any) -> str:
    return str(policy.parse_quota(text))


_CHECKS: tuple[tuple[str, Callable[[Any], object]], ...] = (
    ("rate", _rate), ("burst", _burst), ("quota", _quota))


def limit_fields(limits: LimitChanges) -> dict[str, Any]:
    """The record fields `limits` sets, checked and in canonical text; InvalidRequest naming
    the field otherwise."""
    out: dict[str, Any] = {}
    for name, canonical in _CHECKS:
        value = getattr(limits, name)
        if value is UNSET:
            continue
        try:
            out[name] = None if value is None else canonical(value)
        except policy.PolicyError as exc:
            raise InvalidRequest(name, str(exc)) from None
    return out
