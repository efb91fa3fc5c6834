"""Per-worker leases and the request-path decision (gateway/limits/local.py), on a fake clock:
tables of cases, and properties (hypothesis) over random interleavings of requests, syncs,
grants, failures and time."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.limits.leases import Ask, Lease, Limit, Settings
from gateway.limits.local import LeaseTable
from gateway.limits.policy import parse_quota, parse_rate

KEY = "gw:key:k1"
NOON = datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: float = NOON) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def table(clock: Clock | None = None, **options: object) -> tuple[LeaseTable, Clock]:
    clock = clock or Clock()
    return LeaseTable(Settings(**options), clock=clock, wall=clock), clock  # type: ignore[arg-type]


def sync(t: LeaseTable, grant: int | None = None, remaining: float = 1000) -> list[Ask]:
    """One sync in which Redis grants what is asked (or `grant`)."""
    asks = t.plan()
    for ask in asks:
        t.settle(ask, ask.take if grant is None else min(grant, ask.take), remaining)
    return asks


RATE = Limit("key", KEY, parse_rate("100/s"))
DAILY = Limit("key-quota", KEY, parse_quota("1000/day"))
TOTAL = Limit("key-total", KEY, parse_quota("1000"))


def test_a_policy_never_synced_waits_then_is_decided() -> None:
    t, _ = table()
    assert t.decide([RATE]).outcome == "wait"
    sync(t)
    decision = t.decide([RATE], KEY)
    assert decision.admitted
    assert dict(decision.headers) == {"RateLimit-Policy": '"key";q=100;w=1',
                                      "RateLimit": '"key";r=100;t=0'}


def test_final_turns_a_wait_into_a_refusal() -> None:
    t, _ = table()
    assert t.decide([RATE], final=True)[:3] == ("refuse", "rate_limited", 1)


def test_an_empty_lease_refuses_when_redis_had_nothing_left() -> None:
    t, clock = table()
    t.decide([RATE])
    sync(t, grant=2, remaining=0)
    clock.now += 0.15  # one interval: the paced lease is all spendable
    assert [t.decide([RATE]).outcome for _ in range(3)] == ["admit", "admit", "refuse"]
    assert t.decide([RATE]).reason == "rate_limited"


def test_a_contended_lease_is_spent_evenly_over_the_interval() -> None:
    t, clock = table(interval=0.1)
    t.decide([RATE])
    (ask,) = t.plan()
    t.settle(ask, 10, 0)  # the first grant empties the bucket: a burst, spendable at once
    assert sum(t.decide([RATE]).admitted for _ in range(12)) == 10
    clock.now += 0.1
    (ask,) = t.plan()
    t.settle(ask, 10, 0)  # a refill of a bucket already empty: paced over 0.1 s
    admitted = []
    for _ in range(10):
        clock.now += 0.0101  # a little over a tenth: float steps on an epoch clock
        admitted.append(sum(t.decide([RATE]).admitted for _ in range(5)))
    assert admitted == [1] * 10
    t.decide([RATE])
    (ask,) = t.plan()
    t.settle(ask, 10, 50)  # Redis had plenty: no pacing
    assert sum(t.decide([RATE]).admitted for _ in range(10)) == 10


def test_an_empty_lease_waits_when_redis_had_plenty() -> None:
    t, _ = table()
    t.decide([RATE])
    sync(t, grant=1, remaining=50)
    assert t.decide([RATE]).admitted
    assert t.decide([RATE]).outcome == "wait"  # a sudden rise: ask again, do not refuse


def test_a_used_up_quota_refuses_until_the_next_utc_day() -> None:
    t, clock = table()
    t.decide([DAILY])
    sync(t, grant=0, remaining=0)
    decision = t.decide([DAILY])
    assert (decision.reason, decision.retry_after) == ("quota_exhausted", 12 * 3600)
    clock.now += 12 * 3600  # midnight UTC: a new period, a new key, a new lease
    assert t.decide([DAILY]).outcome == "wait"


def test_a_used_up_quota_is_asked_again_while_requests_come() -> None:
    t, clock = table()
    t.decide([TOTAL])
    for ask in t.plan():
        t.settle(ask, 0, 0)
    for _ in range(10):
        assert t.decide([TOTAL]).reason == "quota_exhausted"
    clock.now += 0.15
    (ask,) = t.plan()
    assert ask.take == 1
    t.settle(ask, 1, 5)  # another worker gave tokens back, or the quota was raised
    assert t.decide([TOTAL]).admitted
    for _ in range(20):  # no requests: nothing asked
        clock.now += 0.15
        for ask in t.plan():
            t.settle(ask, ask.take, 5)
    assert all(ask.take == 0 for ask in t.plan())


def test_a_refusal_spends_no_token_of_the_other_limits() -> None:
    t, _ = table()
    t.decide([RATE, DAILY])
    sync(t)
    quota_tokens = t.leases[DAILY.bucket].tokens
    t.leases[RATE.bucket].tokens = 0
    t.leases[RATE.bucket].server_remaining = 0
    decision = t.decide([RATE, DAILY])
    assert decision.reason == "rate_limited"
    assert t.leases[DAILY.bucket].tokens == quota_tokens


def test_quota_exhaustion_wins_over_a_rate_refusal() -> None:
    t, _ = table()
    t.decide([RATE, DAILY])
    for ask in t.plan():
        t.settle(ask, 0, 0)
    assert t.decide([RATE, DAILY]).reason == "quota_exhausted"


def test_leases_are_sized_by_demand_and_given_back_when_idle() -> None:
    t, clock = table(interval=0.1, horizon=2.0, lease_ttl=1.0)
    t.decide([RATE])
    sync(t)
    for _ in range(50):  # 50 requests in 0.1 s: 500 req/s
        t.decide([RATE])
    clock.now += 0.1
    (ask,) = t.plan()
    assert 90 <= ask.take <= 100  # 500 req/s x 0.2 s, within the burst
    t.settle(ask, ask.take, 0)
    clock.now += 1.0  # unused: it would expire, so it goes back, and less is asked
    (ask,) = t.plan()
    assert ask.refund > 0 and ask.take < 90
    t.settle(ask, ask.take, 0)
    for _ in range(10):  # idle: the estimate halves at every sync, down to asking nothing
        clock.now += 0.1
        for ask in t.plan():
            t.settle(ask, ask.take, 0)
    clock.now += 1.0
    # In use lately: a few tokens kept in hand (at most 5% of the burst).
    assert all(ask.take <= 5 for ask in t.plan())
    clock.now += 10.0
    for ask in t.plan():
        t.settle(ask, ask.take, 0)
    clock.now += 1.0
    assert all(ask.take == 0 for ask in t.plan())
    assert t.leases[RATE.bucket].tokens == 0  # an idle worker holds nothing


def test_a_closing_worker_gives_back_and_takes_nothing() -> None:
    t, _ = table()
    t.decide([DAILY])
    sync(t)
    tokens = t.leases[DAILY.bucket].tokens
    t.closing = True
    t.leases[DAILY.bucket].refund += tokens
    t.leases[DAILY.bucket].tokens = 0
    (ask,) = t.plan()
    assert (ask.take, ask.refund) == (0, tokens)


def test_quota_leases_hold_at_most_one_percent() -> None:
    t, clock = table()
    limit = Limit("q", KEY, parse_quota("100000/month"))
    t.decide([limit])
    sync(t)
    for _ in range(100_000):
        t.leases[limit.bucket].demand += 1
    clock.now += 0.2
    (ask,) = t.plan()
    assert ask.take <= 1000


def test_outage_rates_at_the_worker_share_and_quotas_by_setting() -> None:
    t, clock = table()
    t.decide([RATE])
    t.decide([DAILY])
    t.decide([TOTAL])
    for _ in range(5):  # a quarter of 100/s granted, under contention, for 5 s
        for ask in t.plan():
            rate = ask.lease.limit is RATE
            t.settle(ask, 25 if rate else 0, 0 if rate else 50)
            t.leases[RATE.bucket].refund = 0
        t.leases[RATE.bucket].tokens = 0
        clock.now += 1
    t.leases[RATE.bucket].tokens = 0  # spent: leftover lease tokens would be spent first
    t.failed(t.plan())
    assert not t.online
    admitted = 0
    for _ in range(200):  # 2 s at 100 req/s asked
        clock.now += 0.01
        admitted += t.decide([RATE]).admitted
    assert 40 <= admitted <= 55  # the worker's share: 25% of 100/s
    assert t.decide([DAILY]).admitted  # day quotas fail open by default
    assert t.decide([TOTAL]).reason == "key_store_unavailable"  # totals fail closed
    assert t.leases[DAILY.bucket].owed == {"2026-12-03": 1}


def test_usage_counts_by_minute_and_reason() -> None:
    t, clock = table()
    t.decide([RATE], KEY)  # a wait is not counted
    sync(t, grant=1, remaining=0)
    clock.now += 0.15
    t.decide([RATE], KEY)
    t.decide([RATE], KEY)
    clock.now += 60
    t.decide([RATE], KEY)
    assert t.take_usage() == {(KEY, "2026-12-03", "1200:ok"): 1,
                              (KEY, "2026-12-03", "1200:rate_limited"): 1,
                              (KEY, "2026-12-03", "1201:rate_limited"): 1}


def test_a_key_without_limits_is_admitted_with_no_fields_and_its_usage_counted() -> None:
    t, _ = table()
    for _ in range(3):
        decision = t.decide([], KEY)
        assert (decision.outcome, decision.headers) == ("admit", ())
    assert t.take_usage() == {(KEY, "2026-12-03", "1200:ok"): 3}
    assert t.leases == {}


def test_a_lease_made_directly_has_its_rules_shape() -> None:
    # bench/limits_fleet.py puts a Lease in the table by hand: its RateLimit field once read
    # an unset shape (a rate taken for a quota with no period end: infinity, OverflowError).
    t, clock = table()
    lease = t.leases[RATE.bucket] = Lease(RATE, known=True, server_remaining=1e9)
    lease.tokens, lease.expires = 10, clock.now + 60
    assert (lease.is_rate, lease.cap, lease.size) == (True, 100, 100)
    assert t.decide([RATE], KEY).headers == (
        ("RateLimit-Policy", '"key";q=100;w=1'), ("RateLimit", '"key";r=100;t=0'))


# -- properties


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("sync"), st.integers(0, 40)),
    st.tuples(st.just("fail"), st.just(0)),
    st.tuples(st.just("tick"), st.integers(1, 500)),
), max_size=200)
LIMITS = (RATE, DAILY, TOTAL)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_online_a_worker_never_admits_more_than_redis_granted(actions: list[tuple[str, int]]
                                                              ) -> None:
    t, clock = table()
    granted = dict.fromkeys((limit.bucket for limit in LIMITS), 0)
    admitted = dict.fromkeys(granted, 0)
    for action, value in actions:
        if action == "request":
            limits = [LIMITS[value], LIMITS[(value + 1) % 3]]
            decision = t.decide(limits, KEY)
            if decision.admitted and t.online:
                for limit in limits:
                    admitted[limit.bucket] += 1
        elif action == "sync":
            for ask in t.plan():
                grant = min(value, ask.take)
                granted[ask.lease.limit.bucket] += grant - ask.refund
                t.settle(ask, grant, 0)
        elif action == "fail":
            t.failed(t.plan())
        else:
            clock.now += value / 100
        for lease in t.leases.values():
            assert lease.tokens >= 0
            assert lease.outage_level <= max(1.0, 100)
    for bucket, lease in t.leases.items():
        # What Redis counts (granted less given back) covers everything admitted online plus
        # what the worker still holds or will give back.
        assert admitted[bucket] <= granted[bucket] + lease.refund
        assert admitted[bucket] + lease.tokens <= granted[bucket] + lease.refund


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 50), st.integers(0, 50))
def test_a_lease_admits_exactly_its_tokens(grant: int, extra: int) -> None:
    t, clock = table()
    t.decide([RATE])
    sync(t, grant=grant, remaining=0)
    clock.now += 0.15
    tokens = t.leases[RATE.bucket].tokens
    outcomes = [t.decide([RATE]).admitted for _ in range(tokens + extra)]
    assert sum(outcomes) == tokens
