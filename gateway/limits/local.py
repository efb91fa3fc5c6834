"""Per-worker lease state and the request-path decision, pure (the clocks are injected).

Why leases. Asking Redis on every request (Kong's `redis` policy) is exact but costs a round
trip and a command per request; splitting the limit evenly between nodes (Tyk's DRL) is free
but drifts under uneven load. Here the authoritative bucket (a rate's token bucket, a quota's
used-count) lives in Redis, and each worker holds a *lease*: tokens it took from that bucket in
the background (gateway/limits/sync.py) and spends in pure Python, O(1), without an `await`.
A worker asks, at each sync, for what its measured demand will need until the next sync or
two, so busy workers hold what they use and idle ones hold nothing. Every admitted request
spent a token Redis granted, so the fleet admits at most what the bucket allows: a rate's error
is bounded by the tokens leased but unused (given back, see below), a quota is never exceeded
while Redis answers, and a worker killed with a lease only leaves its tokens unused.

A lease granted under contention (Redis had nothing left after the grant, and nothing at the
sync before: a refill, not a burst saved up) is *paced*: its
tokens become spendable evenly over one sync interval instead of all at once, so admissions
follow the bucket's refill second by second rather than the moments batches arrive (the fleet
bench's worst second went from 12% to 5% off the limit). An unreached limit is never paced.

Leases expire (`lease_ttl`): unused tokens go back to Redis at the next sync (a rate's bucket
takes them up to its burst; a quota's count is lowered), so nobody hoards them after traffic
moves. Quota leases are also capped to 1% of the quota (or 10 tokens, if more), so tokens
stranded by a killed worker cost at most that much under-use.

Three outcomes. `admit` and `refuse` are final. `wait` means this worker cannot tell yet: a
policy it has never synced, or a lease that ran dry while Redis had plenty at the last sync (a
sudden rise in traffic). The caller then waits for the next background sync (woken at once;
every waiting request of the worker shares that one batch) and decides again with
`final=True`. So the request path never sends a command itself, and the usual request (a
lease in hand) never waits.

Redis down (`online` False): a rate is enforced per worker at its *share* of the limit (the
part of the fleet's grants it received over the last SHARE_WINDOW seconds, at least
`outage_min_share`), in a local bucket; a quota spends what is left of its lease, then admits
(fail open) or refuses with `key_store_unavailable` (fail closed) by period: by default open
for day and month, closed for a total. What was admitted meanwhile without a lease is owed:
added to a quota's count when Redis answers again, and taken from a rate's bucket (down to
empty, no further: a bucket forgives what is older than one window anyway).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal

from gateway.limits.leases import (
    ADMIT,
    Ask,
    Decision,
    Lease,
    Limit,
    Settings,
)
from gateway.limits.policy import (
    PolicyState,
    Quota,
    Rate,
    next_reset,
    period_label,
    period_seconds,
    policy_field,
    quota_retry_after,
    rate_retry_after,
)

RATE_LIMITED = "rate_limited"
QUOTA_EXHAUSTED = "quota_exhausted"
STORE_UNAVAILABLE = "key_store_unavailable"
IDLE_DROP = 60.0  # a lease unused this long is forgotten (its tokens given back first)
KEEP_WARM = 10.0  # seconds since its last request a lease keeps at least one token
HOLD_SLOW = 5.0  # ...or this many seconds of its slow average demand
SLOW_BURST_FRACTION = 0.05  # ...but no more than this part of a rate's burst
UNCONTENDED_TTL_FACTOR = 5  # a lease Redis had more for lives this many lease_ttl
QUOTA_LEASE_FRACTION = 0.01  # a quota lease holds at most this part of the quota...
QUOTA_LEASE_MIN = 10.0  # ...or this many tokens, if more
MAX_USAGE_ENTRIES = 100_000  # usage counts waiting for a flush, per worker

class LeaseTable:
    """Every lease of one worker, and its usage counts waiting for a flush."""

    def __init__(self, settings: Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings or Settings()
        self.clock = clock
        self.wall = wall
        self.leases: dict[str, Lease] = {}
        self.online = True
        self.closing = False
        # (scope, UTC day, field) -> count; field "HHMM:ok" or "HHMM:<reason>"
        self.usage: dict[tuple[str, str, str], int] = {}
        self.usage_dropped = 0
        self._minute = -1
        self._minute_names = ("", "")
        self._entries: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._policy_fields: dict[tuple[int, ...], str] = {}
        self.admitted_unleased = 0  # admitted without a Redis-granted token (outage)

    # -- the request path

    def decide(self, limits: Sequence[Limit], usage_scope: str | None = None, *,
               final: bool = False) -> Decision:
        """Admit, refuse or (unless `final`) wait, for a request all of `limits` apply to. An
        admission spends one token of every limit; a refusal or a wait spends none."""
        if not limits:  # a key with no limit: only its usage is counted
            if usage_scope is not None:
                self._count(usage_scope, self.wall(), "ok")
            return ADMIT
        if not final:
            headers = self.spend(limits, usage_scope)
            if headers is not None:
                return Decision("admit", None, 0, headers)
        now = self.clock()
        wall = self.wall()
        leases = [self._lease(limit, now, wall) for limit in limits]
        refusal: tuple[str, int] | None = None
        wait = False
        for lease in leases:
            lease.demand += 1
            lease.last_used = now
            verdict = self._check(lease, now, wall, final)
            if verdict == "wait":
                wait = True
                lease.waiting += 1
            elif verdict is not None:
                refusal = _worse(refusal, verdict)
        if refusal is not None:
            decision = Decision("refuse", refusal[0], refusal[1], self._headers(leases, now, wall))
        elif wait:
            return Decision("wait")
        else:
            for lease in leases:
                self._spend(lease, now, wall)
            decision = Decision("admit", headers=self._headers(leases, now, wall))
        if usage_scope is not None:
            self._count(usage_scope, wall, decision.reason or "ok")
        return decision

    def spend(self, limits: Sequence[Limit],
              usage_scope: str | None = None) -> tuple[tuple[str, str], ...] | None:
        """The usual request, as cheaply as it can be decided: when every lease holds a
        spendable token (unexpired, not paced, in the current period, for the rule as it is),
        spend one of each and return the RateLimit fields; else None, and `decide` decides.
        The request path calls this first: on every request that a limit applies to."""
        if not self.online:
            return None
        now = self.clock()
        wall = self.wall()
        get = self.leases.get
        held = []
        for limit in limits:
            lease = get(limit.bucket)
            if (lease is None or lease.limit is not limit or lease.tokens < 1
                    or now >= lease.expires or lease.paced
                    or (wall >= lease.period_end and not lease.is_rate)):
                return None
            held.append(lease)
        for lease in held:
            lease.tokens -= 1
            lease.demand += 1
            lease.last_used = now
        if usage_scope is not None:
            self._count(usage_scope, wall, "ok")
        return self._headers(held, now, wall)

    def count(self, usage_scope: str) -> None:
        """A request of a key no limit applies to: only its usage is counted."""
        self._count(usage_scope, self.wall(), "ok")

    def _lease(self, limit: Limit, now: float, wall: float) -> Lease:
        lease = self.leases.get(limit.bucket)
        if lease is None:
            lease = self.leases[limit.bucket] = Lease(limit, last_plan=now, outage_at=now)
        elif lease.limit is not limit:
            if lease.limit != limit:
                self._policy_fields.clear()  # changed after creation: Redis gets the new rule
            lease.limit = limit  # (equal, or new: the fast path compares by identity)
            lease.shape()
        if isinstance(limit.rule, Quota) and wall >= lease.period_end:
            period = limit.rule.period
            label = period_label(period, wall)
            lease.period_end = next_reset(period, wall) or math.inf
            lease.period_length = period_seconds(period, wall)
            if lease.period != label:
                # A new period: the old lease's tokens belong to the old period's key.
                lease.period, lease.tokens, lease.known = label, 0, False
                lease.exhausted, lease.refund = False, 0
        return lease

    def _check(self, lease: Lease, now: float, wall: float,
               final: bool) -> tuple[str, int] | Literal["wait"] | None:
        rule = lease.limit.rule
        if lease.tokens > 0 and (now < lease.expires or not self.online):
            if lease.paced and self.online:
                elapsed = (now - lease.paced_at) / self.settings.interval
                unreleased = lease.paced * (1.0 - elapsed)
                if lease.tokens - unreleased < 1 - 1e-6:
                    return RATE_LIMITED, 1
            return None
        if isinstance(rule, Rate):
            if not self.online:
                self._refill_outage(lease, now)
                return None if lease.outage_level >= 1 else (
                    RATE_LIMITED, rate_retry_after(rule))
            if final or (lease.known and lease.server_remaining < 1):
                return RATE_LIMITED, rate_retry_after(rule)
            return "wait"
        if lease.known and lease.exhausted:
            return QUOTA_EXHAUSTED, quota_retry_after(rule, wall)
        if self.online and not final:
            return "wait"
        if self.online and lease.known:
            # Redis has quota left but this worker's lease fell short of a sudden crowd:
            # a pace refusal, not a used-up quota.
            return RATE_LIMITED, 1
        if self.settings.fails_open(rule.period):
            return None
        return STORE_UNAVAILABLE, 1

    def _spend(self, lease: Lease, now: float, wall: float) -> None:
        if lease.tokens > 0 and (now < lease.expires or not self.online):
            lease.tokens -= 1
            return
        self.admitted_unleased += 1
        if isinstance(lease.limit.rule, Rate):
            lease.outage_level -= 1
        # Redis takes it into account when it answers again: a quota's count, a rate's bucket
        lease.owed[lease.period] = lease.owed.get(lease.period, 0) + 1

    def _refill_outage(self, lease: Lease, now: float) -> None:
        rule = lease.limit.rule
        assert isinstance(rule, Rate)
        share = lease.outage_share or self.settings.outage_min_share
        capacity = max(1.0, share * rule.burst)
        lease.outage_level = min(capacity, lease.outage_level
                                 + (now - lease.outage_at) * share * rule.per_second)
        lease.outage_at = now

    def _headers(self, leases: Sequence[Lease], now: float,
                 wall: float) -> tuple[tuple[str, str], ...]:
        # On every answer, so kept cheap: the policy field is made once per set of limits,
        # and the RateLimit field only for the policy closest to its limit.
        # By the leases themselves (ids; the table is cleared whenever a lease goes or changes
        # its rule, so an id is never read for another lease).
        key = tuple(map(id, leases))
        policy = self._policy_fields.get(key)
        if policy is None:
            if len(self._policy_fields) > MAX_USAGE_ENTRIES:
                self._policy_fields.clear()
            policy = self._policy_fields[key] = policy_field([
                PolicyState(lease.limit.name, lease.limit.rule.limit,
                            round(lease.limit.rule.window)
                            if isinstance(lease.limit.rule, Rate) else lease.period_length,
                            0, 0.0) for lease in leases])
        best: Lease = leases[0]
        best_used = -1.0
        best_remaining = 0
        for lease in leases:
            remaining = int(lease.tokens + lease.server_remaining) if lease.known else 0
            if remaining > lease.cap:
                remaining = lease.cap
            elif remaining < 0:
                remaining = 0
            used = 1.0 - remaining / lease.size
            # Ties: the later reset wins (a quota's period outlasts a rate's second).
            if used > best_used or (used == best_used and not lease.is_rate):
                best, best_used, best_remaining = lease, used, remaining
        if best.is_rate:
            reset = (best.cap - best_remaining) / best.per_second
        else:
            reset = 0.0 if best.period_end == math.inf else best.period_end - wall
        current = f"{best.limit.quoted};r={best_remaining};t={math.ceil(reset)}"
        return (("RateLimit-Policy", policy), ("RateLimit", current))

    def _count(self, scope: str, wall: float, reason: str) -> None:
        minute = int(wall // 60)
        if minute != self._minute:
            moment = datetime.fromtimestamp(minute * 60, UTC)
            self._minute, self._minute_names = minute, (f"{moment:%Y-%m-%d}", f"{moment:%H%M}")
            self._entries.clear()
        # The entry of each (scope, reason) this minute, made once: on every request.
        entry = self._entries.get((scope, reason))
        if entry is None:
            day, hhmm = self._minute_names
            entry = (scope, day, f"{hhmm}:{reason}")
            if len(self._entries) < MAX_USAGE_ENTRIES:
                self._entries[(scope, reason)] = entry
        usage = self.usage
        if entry in usage:
            usage[entry] += 1
        elif len(self.usage) < MAX_USAGE_ENTRIES:
            self.usage[entry] = 1
        else:
            self.usage_dropped += 1

    # -- the background sync (sync.py sends what `plan` returns, then `settle` or `failed`)

    def plan(self) -> list[Ask]:
        """What the next sync should ask for: a lease running low for its measured demand, a
        waiting request, tokens to give back, counts owed from an outage."""
        now = self.clock()
        settings = self.settings
        asks = []
        for bucket, lease in list(self.leases.items()):
            if lease.in_flight:
                continue
            elapsed = max(now - lease.last_plan, settings.interval)
            observed = lease.demand / elapsed
            # Rise at once, decay by halves: a burst is served, a lull releases tokens.
            lease.rate_estimate = max(observed, (lease.rate_estimate + observed) / 2)
            weight = min(1.0, elapsed / KEEP_WARM)  # and a slow average, over ~KEEP_WARM s
            lease.slow_estimate += (observed - lease.slow_estimate) * weight
            lease.demand, lease.last_plan = 0, now
            if lease.tokens > 0 and now + settings.interval >= lease.expires:
                # Would expire before the next sync: give back and take anew in one call.
                lease.refund += lease.tokens
                lease.tokens = 0
            if now - lease.last_used > IDLE_DROP and not lease.owed:
                lease.refund += lease.tokens
                lease.tokens = 0
                if lease.refund == 0:
                    del self.leases[bucket]
                    self._policy_fields.clear()
                    continue
            want = self._want(lease, settings, now)
            take = 0
            if self.closing:
                pass  # the last sync of a stopping worker gives back, takes nothing
            elif lease.waiting or lease.tokens < want / 2:
                take = max(math.ceil(want) - lease.tokens, lease.waiting)
            owed = tuple(lease.owed.items())
            if take or lease.refund or owed:
                lease.in_flight = True
                asks.append(Ask(lease, take, lease.refund, owed))
        return asks

    def _want(self, lease: Lease, settings: Settings, now: float) -> float:
        rule = lease.limit.rule
        want = lease.rate_estimate * settings.interval * settings.horizon
        if want < 0.5:
            want = 0.0  # the halving estimate of an idle lease: ask nothing, hold nothing
        if now - lease.last_used < KEEP_WARM:
            # A key in use keeps tokens in hand for its slow average over HOLD_SLOW seconds
            # (at least one, at most 5% of a burst): a slow key's request neither waits for a
            # sync nor costs one each.
            slow = lease.slow_estimate * HOLD_SLOW
            if isinstance(rule, Rate):
                slow = min(slow, rule.burst * SLOW_BURST_FRACTION)
            want = max(want, slow, 1.0)
        if isinstance(rule, Rate):
            return min(want, rule.burst)
        if lease.exhausted:
            # Asked again, one token, while requests come: tokens other workers give back,
            # or a quota raised meanwhile, end the exhaustion.
            return 1.0 if want > 0 or lease.waiting else 0.0
        cap = max(QUOTA_LEASE_MIN, rule.limit * QUOTA_LEASE_FRACTION)
        return min(max(want, lease.waiting), cap)

    def settle(self, ask: Ask, granted: int, remaining: float) -> None:
        """Redis answered `ask`: `granted` tokens, `remaining` left in its bucket after."""
        now = self.clock()
        lease = ask.lease
        lease.in_flight = False
        lease.waiting = 0
        lease.refund -= ask.refund
        for label, count in ask.owed:
            left = lease.owed.get(label, 0) - count
            if left > 0:
                lease.owed[label] = left
            else:
                lease.owed.pop(label, None)
        lease.tokens += granted
        # Paced only when Redis had no more: an unreached limit spends its lease at once.
        contended = isinstance(lease.limit.rule, Rate) and remaining < 1
        # And only a refill: when the bucket was already empty at the last sync. Tokens that
        # accumulated while the key was quiet are its burst, spendable at once (a fresh
        # `5/s` key answers five requests in a row before its first 429).
        refill = lease.known and lease.server_remaining < 1
        lease.paced, lease.paced_at = (float(lease.tokens) if contended and refill else 0.0), now
        # A lease Redis had more for hoards nothing others want: it lives longer, so a slow
        # key is not given back and taken again every lease_ttl.
        lease.expires = now + self.settings.lease_ttl * (1 if contended or remaining < 1
                                                         else UNCONTENDED_TTL_FACTOR)
        lease.known = True
        lease.server_remaining = remaining
        lease.exhausted = isinstance(lease.limit.rule, Quota) and remaining < 1 and \
            granted < ask.take
        if granted:
            lease.grants.append((now, granted))
            lease.first_grant = min(lease.first_grant, now)
        lease.outage_level, lease.outage_at = 0.0, now
        self.online = True

    def failed(self, asks: Sequence[Ask]) -> None:
        """Redis did not answer: the asks stay to be made again (their refunds and owed counts
        included), and the worker decides on its own until Redis answers."""
        now = self.clock()
        if self.online:
            for lease in self.leases.values():
                lease.outage_level, lease.outage_at = 0.0, now
                if isinstance(lease.limit.rule, Rate):  # the last known share, kept
                    lease.outage_share = lease.share(now, self.settings.outage_min_share)
        self.online = False
        for ask in asks:
            ask.lease.in_flight = False

    def take_usage(self) -> dict[tuple[str, str, str], int]:
        usage, self.usage = self.usage, {}
        return usage

    def restore_usage(self, usage: dict[tuple[str, str, str], int]) -> None:
        """Put back counts a failed flush did not deliver (within the bound)."""
        for entry, count in usage.items():
            if entry in self.usage:
                self.usage[entry] += count
            elif len(self.usage) < MAX_USAGE_ENTRIES:
                self.usage[entry] = count
            else:
                self.usage_dropped += count


def _worse(current: tuple[str, int] | None, new: tuple[str, int]) -> tuple[str, int]:
    """The refusal to answer with: a used-up quota before a rate (it lasts longer), the longer
    wait within one reason."""
    order = {QUOTA_EXHAUSTED: 0, STORE_UNAVAILABLE: 1, RATE_LIMITED: 2}
    if current is None:
        return new
    return min(current, new, key=lambda r: (order.get(r[0], 3), -r[1]))
