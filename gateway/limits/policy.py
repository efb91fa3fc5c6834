"""Rules of rate limits and quotas (SPEC §11), pure: parsing, validation, UTC periods, and the
IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10/11).

A rate is "N requests per second, minute or hour, with a burst": a token bucket that refills
at N per window and holds at most `burst` tokens (default N, one window's worth). A quota is
"N per UTC day or UTC calendar month", or a total that never refills.

The header fields are Structured Field lists. `RateLimit-Policy` names every policy that applies
(the draft wants it stable across responses, so a client learns the shape once); `RateLimit`
gives the live state of the one policy closest to its limit (the smallest remaining fraction),
as the issue asks:

    RateLimit-Policy: "key";q=100;w=1, "key-quota";q=10000;w=86400
    RateLimit: "key";r=42;t=1

`w` is the window in seconds (for a calendar month, the length of the current month; a total
has no window and carries no `w`); `r` the requests remaining; `t` the seconds until the
window (or period) resets. Retry-After is a whole number of seconds, at least 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

QuotaPeriod = Literal["day", "month", "total"]

WINDOWS: dict[str, float] = {"s": 1.0, "sec": 1.0, "second": 1.0,
                             "m": 60.0, "min": 60.0, "minute": 60.0,
                             "h": 3600.0, "hour": 3600.0}
WINDOW_NAMES = {1.0: "s", 60.0: "min", 3600.0: "h"}
QUOTA_PERIODS: dict[str, QuotaPeriod] = {"day": "day", "d": "day", "month": "month",
                                         "total": "total"}
MAX_COUNT = 10**12  # far above any real limit; keeps Lua's doubles exact
TOTAL_RETRY_AFTER = 86_400  # a used-up total never refills: tell clients to come back much later


class PolicyError(ValueError):
    """A rate or quota that cannot be used; the message says why in plain words."""


@dataclass(frozen=True, slots=True)
class Rate:
    limit: int  # requests per window
    window: float  # seconds: 1, 60 or 3600
    burst: int  # most tokens the bucket holds

    @property
    def per_second(self) -> float:
        return self.limit / self.window

    def __str__(self) -> str:
        text = f"{self.limit}/{WINDOW_NAMES[self.window]}"
        return text if self.burst == self.limit else f"{text} burst {self.burst}"


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    period: QuotaPeriod

    def __str__(self) -> str:
        return str(self.limit) if self.period == "total" else f"{self.limit}/{self.period}"


def _count(text: str, what: str) -> int:
    text = text.strip().replace("_", "")
    if not re.fullmatch(r"\d+", text):
        raise PolicyError(f"{what} must be a whole number of requests, not {text!r}")
    value = int(text)
    if value < 1:
        raise PolicyError(f"{what} must be at least 1")
    if value > MAX_COUNT:
        raise PolicyError(f"{what} must be at most {MAX_COUNT}")
    return value


def parse_rate(text: str, burst: int | str | None = None) -> Rate:
    """"100/s", "6000/min", "1000/h" (also "100/1s", "100/m", "100/second"); `burst` defaults
    to the limit."""
    if not isinstance(text, str) or "/" not in text:
        raise PolicyError(f"a rate is written like 100/s, 6000/min or 1000/h, not {text!r}")
    count, _, unit = text.strip().partition("/")
    unit = unit.strip().lower().removeprefix("1")
    if unit not in WINDOWS:
        raise PolicyError(f"a rate's unit is s, min or h (per second, minute or hour), "
                          f"not {unit!r}")
    limit = _count(count, "a rate's request count")
    return rate_of(limit, WINDOWS[unit], burst)


def rate_of(limit: int, window: float, burst: int | str | None = None) -> Rate:
    """A rate from its parts (the YAML form `{requests: 100, per: 1s, burst: 20}`)."""
    if window not in WINDOW_NAMES:
        raise PolicyError("a rate's window is one second, one minute or one hour")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_COUNT:
        raise PolicyError(f"a rate's request count must be a whole number from 1 to "
                          f"{MAX_COUNT}")
    if burst is None:
        size = limit
    elif isinstance(burst, str):
        size = _count(burst, "a burst")
    elif isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise PolicyError("a burst must be a whole number of at least 1")
    else:
        size = burst
    if size > MAX_COUNT:
        raise PolicyError(f"a burst must be at most {MAX_COUNT}")
    return Rate(limit, window, size)


def parse_quota(text: str) -> Quota:
    """"10000/day", "10000/month", or "10000" (also "10000/total"): a total that never
    refills."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("a quota is written like 10000/day, 10000/month or 10000 (a total)")
    count, _, unit = text.strip().partition("/")
    unit = unit.strip().lower() or "total"
    if unit not in QUOTA_PERIODS:
        raise PolicyError(f"a quota's period is day, month or total, not {unit!r}")
    return Quota(_count(count, "a quota's request count"), QUOTA_PERIODS[unit])


# -- UTC periods


def period_label(period: QuotaPeriod, now: float) -> str:
    """The name of the period `now` (epoch seconds) falls in: "2026-12-03", "2026-12", "total".
    Redis keys of per-period quotas carry it, so a new period starts from a new, empty key."""
    if period == "total":
        return "total"
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_start(period: QuotaPeriod, now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if period == "month":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    raise PolicyError("a total has no period")


def next_reset(period: QuotaPeriod, now: float) -> float | None:
    """Epoch seconds at which the period `now` falls in ends (None for a total)."""
    if period == "total":
        return None
    moment = datetime.fromtimestamp(now, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start.timestamp() + 86_400
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return start.replace(year=year, month=month, day=1).timestamp()


def period_seconds(period: QuotaPeriod, now: float) -> int | None:
    """Length of the current period in seconds (a month's varies), None for a total."""
    end = next_reset(period, now)
    return None if end is None else round(end - period_start(period, now))


# -- header fields


@dataclass(frozen=True, slots=True)
class PolicyState:
    """One policy's live state, as the worker knows it, for the header fields."""

    name: str  # a policy identifier: "key", "account", "route", "key-quota", ...
    limit: int  # q
    window: int | None  # w in seconds (None: a total)
    remaining: int  # r
    reset: float  # t: seconds until the window or period resets (0 for a total)

    @property
    def used_fraction(self) -> float:
        return 1.0 - max(self.remaining, 0) / self.limit


def sf_string(text: str) -> str:
    if not re.fullmatch(r"[\x20-\x7e]*", text):
        raise PolicyError(f"a policy name must be printable ASCII, not {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_field(states: Sequence[PolicyState]) -> str:
    """The RateLimit-Policy value: every policy, in the order given."""
    items = []
    for state in states:
        item = f"{sf_string(state.name)};q={state.limit}"
        if state.window is not None:
            item += f";w={state.window}"
        items.append(item)
    return ", ".join(items)


def closest(states: Sequence[PolicyState]) -> PolicyState | None:
    """The policy closest to its limit: the smallest remaining fraction; on a tie the one that
    resets last (the client waits longest for it)."""
    if not states:
        return None
    return max(states, key=lambda s: (s.used_fraction, s.reset))


def ratelimit_field(state: PolicyState) -> str:
    """The RateLimit value for one policy: `"name";r=R;t=T` (whole seconds, rounded up)."""
    return (f"{sf_string(state.name)};r={max(state.remaining, 0)};"
            f"t={max(math.ceil(state.reset), 0)}")


def header_fields(states: Sequence[PolicyState]) -> list[tuple[str, str]]:
    """Both fields for an answer (none when no policy applies)."""
    nearest = closest(states)
    if nearest is None:
        return []
    return [("RateLimit-Policy", policy_field(states)), ("RateLimit", ratelimit_field(nearest))]


def retry_after(seconds: float) -> int:
    """Retry-After as a whole number of seconds, never 0 (a client would retry at once)."""
    if not math.isfinite(seconds):
        return TOTAL_RETRY_AFTER
    return max(1, math.ceil(seconds))


def rate_retry_after(rate: Rate, deficit: float = 1.0) -> int:
    """Seconds until `deficit` tokens have refilled at the rate."""
    return retry_after(deficit / rate.per_second)


def quota_retry_after(quota: Quota, now: float) -> int:
    end = next_reset(quota.period, now)
    return TOTAL_RETRY_AFTER if end is None else retry_after(end - now)
