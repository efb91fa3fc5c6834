"""What operators read about limits (SPEC §11): quotas' remaining counts and per-minute usage,
from the counters gateway/limits/sync.py keeps in Redis. Off the request path: `keys show`, the
admin API and the page call these.

A quota's count in Redis includes the tokens workers hold as leases but have not spent yet (at
most 1% of the quota per worker, given back within a second or two when unused), so the
remaining count shown can be a little lower than what was really used, never higher.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.limits.leases import Limit
from gateway.limits.policy import Quota, next_reset, period_label
from gateway.limits.sync import quota_key, read_usage
from gateway.store.client import Redis, store_errors

USAGE_DAYS = 7


async def quota_status(redis: Redis, limits: Sequence[Limit],
                       now: float | None = None) -> list[dict[str, Any]]:
    """Every quota in `limits` with what is used and what remains of its current period."""
    now = time.time() if now is None else now
    quotas = [limit for limit in limits if isinstance(limit.rule, Quota)]
    out: list[dict[str, Any]] = []
    for limit in quotas:
        rule = limit.rule
        assert isinstance(rule, Quota)
        with store_errors():
            raw = await redis.get(quota_key(limit, period_label(rule.period, now)))
        used = min(rule.limit, int(raw or 0))
        reset = next_reset(rule.period, now)
        out.append({"policy": limit.name, "quota": str(rule), "used": used,
                    "remaining": rule.limit - used,
                    "resets_at": None if reset is None else _iso(reset)})
    return out


async def usage(redis: Redis, scope: str, *, days: int = USAGE_DAYS,
                now: float | None = None) -> list[dict[str, Any]]:
    """Per-minute counts of the last `days` UTC days (today included), oldest first, minutes
    with no request left out: {"minute": ISO time, "ok": n, "refused": {reason: n}}."""
    now = time.time() if now is None else now
    counts = await read_usage(redis, scope, now, min(max(days, 1), USAGE_DAYS))
    return [{"minute": f"{minute}:00Z", "ok": reasons.get("ok", 0),
             "refused": {reason: n for reason, n in reasons.items() if reason != "ok"}}
            for minute, reasons in counts.items()]


def by_hour(series: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-minute usage summed per hour (the CLI's table, the page's chart)."""
    hours: dict[str, dict[str, Any]] = {}
    for entry in series:
        hour = entry["minute"][:13] + ":00:00Z"
        into = hours.setdefault(hour, {"hour": hour, "ok": 0, "refused": {}})
        into["ok"] += entry["ok"]
        for reason, count in entry["refused"].items():
            into["refused"][reason] = into["refused"].get(reason, 0) + count
    return [hours[h] for h in sorted(hours)]


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
