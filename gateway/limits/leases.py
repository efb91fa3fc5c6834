"""What a worker holds for each policy (gateway/limits/local.py decides with them): the policy
itself (`Limit`), its lease of tokens from Redis (`Lease`), what a sync asks of Redis for it
(`Ask`), the decision a request gets (`Decision`), and the limiter's settings."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from gateway.limits.policy import Quota, QuotaPeriod, Rate, sf_string

Outcome = Literal["admit", "refuse", "wait"]
SHARE_WINDOW = 5.0  # seconds of grants a worker's outage share is measured over
DEFAULT_FAIL_OPEN: dict[QuotaPeriod, bool] = {"day": True, "month": True, "total": False}


@dataclass(frozen=True, slots=True)
class Settings:
    # Seconds between background syncs. bench/limits_fleet.py, 20 s: 0.2 s gave a worst second
    # 12% off and 0.056 commands a request; 0.15 s 6% and 0.070.
    interval: float = 0.15
    lease_ttl: float = 1.0  # unused leased tokens go back after this long
    horizon: float = 2.0  # a lease is sized for this many intervals of measured demand
    outage_min_share: float = 0.1
    fail_open: tuple[tuple[QuotaPeriod, bool], ...] = tuple(DEFAULT_FAIL_OPEN.items())

    def fails_open(self, period: QuotaPeriod) -> bool:
        return dict(self.fail_open).get(period, False)


@dataclass(frozen=True, slots=True)
class Limit:
    """One policy that applies to a request. `scope` names the record whose slot its counters
    live in (`gw:key:ID`, `gw:account:ID`); `variant` separates buckets of one scope (a route
    default is per key and per route)."""

    name: str  # the policy's name in the header fields
    scope: str
    rule: Rate | Quota
    variant: str = ""
    bucket: str = field(init=False, compare=False, repr=False)  # the lease's id in a worker
    quoted: str = field(init=False, compare=False, repr=False)  # the name as an sf-string

    def __post_init__(self) -> None:
        kind = "rate" if isinstance(self.rule, Rate) else f"quota:{self.rule.period}"
        object.__setattr__(self, "bucket", f"{self.scope}|{kind}|{self.variant}")
        object.__setattr__(self, "quoted", sf_string(self.name))


class Decision(NamedTuple):  # a tuple: made on every request, and cheaper than a dataclass
    outcome: Outcome
    reason: str | None = None  # a SPEC §5 code when refused
    retry_after: int = 0
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def admitted(self) -> bool:
        return self.outcome == "admit"


ADMIT = Decision("admit")  # no limit applies: no headers


@dataclass(slots=True)
class Lease:
    limit: Limit
    tokens: int = 0
    expires: float = 0.0
    known: bool = False  # Redis has answered for it at least once
    demand: int = 0  # requests that wanted a token since the last plan
    rate_estimate: float = 0.0  # requests per second, smoothed
    slow_estimate: float = 0.0  # requests per second, averaged over ~KEEP_WARM seconds
    last_plan: float = 0.0
    last_used: float = 0.0
    server_remaining: float = 0.0  # what Redis had left after its last grant
    exhausted: bool = False  # a quota Redis reported used up
    waiting: int = 0  # requests waiting for this lease's next sync
    in_flight: bool = False
    refund: int = 0  # tokens to give back at the next sync
    # Pacing (a rate under contention): `tokens` become spendable evenly over one interval
    # from `paced_at`, so a batch granted just before a second ends is not all spent in it.
    paced: float = 0.0  # tokens being paced (0: no pacing)
    paced_at: float = 0.0
    period: str = ""  # a quota's period label the lease belongs to
    period_end: float = -math.inf  # epoch seconds the period ends (inf for a total)
    period_length: int | None = None  # seconds (None for a total)
    grants: deque[tuple[float, int]] = field(default_factory=deque)
    first_grant: float = math.inf
    outage_level: float = 0.0  # the local bucket while Redis is away
    outage_at: float = 0.0
    outage_share: float = 0.0  # its share of the rate when Redis went away
    # The rule's shape for the RateLimit field, set with the rule (`shape`): no isinstance
    # or attribute chase on each answer.
    is_rate: bool = False
    cap: int = 0  # most a client can have left: the burst, or the quota
    size: int = 1  # the policy's count (q)
    per_second: float = 0.0
    owed: dict[str, int] = field(default_factory=dict)  # period label -> admitted offline

    def __post_init__(self) -> None:
        self.shape()

    def shape(self) -> None:
        rule = self.limit.rule
        self.is_rate = isinstance(rule, Rate)
        self.size = rule.limit
        self.cap = rule.burst if isinstance(rule, Rate) else rule.limit
        self.per_second = rule.per_second if isinstance(rule, Rate) else 0.0

    def share(self, now: float, floor: float) -> float:
        rule = self.limit.rule
        assert isinstance(rule, Rate)
        while self.grants and self.grants[0][0] < now - SHARE_WINDOW:
            self.grants.popleft()
        granted = sum(n for _, n in self.grants)
        # Over the window, or since the first grant if that is more recent: a young lease's
        # grants include the bucket's first burst, so it counts in what the fleet could get.
        age = now - self.first_grant
        span = min(SHARE_WINDOW, max(age, 1.0))
        fleet = rule.per_second * span + (rule.burst if age <= SHARE_WINDOW else 0)
        return min(1.0, max(floor, granted / fleet))


@dataclass(frozen=True, slots=True)
class Ask:
    """What one sync asks of Redis for one lease: `take` tokens, give back `refund`, and add
    `owed` (period label -> count admitted while Redis was away) to a quota's count."""

    lease: Lease
    take: int
    refund: int
    owed: tuple[tuple[str, int], ...] = ()
