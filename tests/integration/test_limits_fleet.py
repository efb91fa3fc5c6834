"""A simulated fleet of six limiter workers (3 instances x 2 workers, each with its own Redis
client and background sync) in this process, sharing one real Redis (single or a 3-master
cluster), offered traffic split 80/15/5 over the instances."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from gateway.limits.leases import Limit, Settings
from gateway.limits.local import LeaseTable
from gateway.limits.policy import parse_quota, parse_rate, period_label
from gateway.limits.sync import LimitSync, quota_key, read_usage, usage_key
from gateway.store.client import GatedCluster, connect
from tests.support.redis_server import RedisServer
from tests.support.redis_topology import ClusterTopology, topology_binaries_missing

SPLIT = (0.4, 0.4, 0.075, 0.075, 0.025, 0.025)  # 80/15/5 over instances, halves per worker
KEY = "gw:key:lim-test"


@dataclass
class Tally:
    admitted: Counter[int] = field(default_factory=Counter)  # second -> admitted
    refused: Counter[str] = field(default_factory=Counter)
    offered: int = 0
    waits: int = 0

    def total(self) -> int:
        return sum(self.admitted.values())


class SimFleet:
    def __init__(self, limiters: list[LimitSync]) -> None:
        self.limiters = limiters
        self.alive = list(range(len(limiters)))

    async def offer(self, limits: Sequence[Limit], rate: float, duration: float, tally: Tally,
                    weights: Sequence[float] = SPLIT, seed: int = 1,
                    events: dict[float, object] | None = None) -> None:
        """Offer `rate` requests a second for `duration` seconds; `events` maps a moment to a
        callable run then (once)."""
        rng = random.Random(seed)
        pending: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        sent = 0
        todo = dict(sorted((events or {}).items()))
        while (elapsed := time.monotonic() - start) < duration:
            for at in [at for at in todo if at <= elapsed]:
                action = todo.pop(at)
                result = action()  # type: ignore[operator]
                if asyncio.iscoroutine(result):
                    await result
            second = int(elapsed)
            while sent < int(elapsed * rate):
                sent += 1
                alive = self.alive
                worker = rng.choices(alive, [weights[i] for i in alive])[0]
                limiter = self.limiters[worker]
                decision = limiter.decide(limits, KEY)
                tally.offered += 1
                if decision.outcome == "wait":
                    tally.waits += 1
                    task = asyncio.ensure_future(self._finish(limiter, limits, second, tally))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif decision.admitted:
                    tally.admitted[second] += 1
                else:
                    tally.refused[decision.reason or "?"] += 1
            await asyncio.sleep(0.004)
        if pending:
            await asyncio.gather(*pending)

    @staticmethod
    async def _finish(limiter: LimitSync, limits: Sequence[Limit], second: int,
                      tally: Tally) -> None:
        decision = await limiter.check(limits, KEY)
        if decision.admitted:
            tally.admitted[second] += 1
        else:
            tally.refused[decision.reason or "?"] += 1

    def kill(self, index: int) -> None:
        """Stop a worker abruptly: its sync ends, its leases are lost, nothing is given back."""
        self.alive.remove(index)
        task = self.limiters[index].periodic._task
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        for i in self.alive:
            await self.limiters[i].stop()
        for limiter in self.limiters:
            await limiter.redis.aclose()


async def make_fleet(url: str, settings: Settings | None = None, count: int = 6) -> SimFleet:
    limiters = []
    for _ in range(count):
        client = connect(url, 0.5)
        if isinstance(client, GatedCluster):
            await client.initialize()
        limiter = LimitSync(client, LeaseTable(settings or Settings()), usage_flush=0.5)
        limiter.start()
        limiters.append(limiter)
    return SimFleet(limiters)


def script_calls(stats: dict[str, int]) -> int:
    """Commands clients sent for the limiter (Redis counts the commands a script runs under
    their own names as well; those are not round trips)."""
    return sum(stats.get(name, 0) for name in ("evalsha", "eval", "script|load"))


def assert_steady(tally: Tally, target: float, seconds: range, mean: bool = True) -> None:
    """Within 15% second by second (the SPEC's 10% is measured by bench/limits_fleet.py with
    real processes: here one event loop runs the six workers and the traffic, and a pause of
    the test machine moves admissions from one second to the next), and the mean within 5%."""
    per_second = [tally.admitted[s] for s in seconds]
    assert all(abs(n - target) <= 0.15 * target for n in per_second), \
        (per_second, dict(tally.admitted))
    if mean:
        assert abs(sum(per_second) / len(per_second) - target) <= 0.05 * target, per_second


# -- single Redis


@pytest.fixture
async def fleet(redis_clean: RedisServer) -> AsyncIterator[SimFleet]:
    fleet = await make_fleet(redis_clean.url)
    yield fleet
    await fleet.stop()


async def test_fleet_admits_the_rate_second_by_second_at_few_commands(
        fleet: SimFleet, redis_clean: RedisServer) -> None:
    limit = Limit("key", KEY, parse_rate("100/s"))
    tally = Tally()
    before = script_calls(redis_clean.command_stats())
    await fleet.offer([limit], 500, 5.0, tally)
    sent = script_calls(redis_clean.command_stats()) - before
    assert_steady(tally, 100, range(2, 5))
    assert tally.total() <= 100 * 5 + 100  # never above the bucket: rate x time + burst
    assert sent / tally.offered <= 0.1, (sent, tally.offered)
    assert tally.refused.keys() == {"rate_limited"}


async def test_unreached_limit_admits_all_without_a_command_per_request(
        fleet: SimFleet, redis_clean: RedisServer) -> None:
    limit = Limit("key", KEY, parse_rate("10000/s"))
    tally = Tally()
    before = script_calls(redis_clean.command_stats())
    await fleet.offer([limit], 500, 3.0, tally)
    sent = script_calls(redis_clean.command_stats()) - before
    assert tally.total() == tally.offered and not tally.refused
    assert sent / tally.offered <= 0.1


async def test_quota_is_never_exceeded_even_with_a_worker_killed(
        fleet: SimFleet, redis_clean: RedisServer) -> None:
    quota = parse_quota("10000")
    limit = Limit("key-quota", KEY, quota)
    tally = Tally()
    await fleet.offer([limit], 3000, 4.5, tally, events={1.5: lambda: fleet.kill(0)})
    assert tally.total() <= 10_000
    assert tally.total() >= 9_800  # a killed worker strands at most 1% of the quota
    assert tally.refused["quota_exhausted"] > 0
    await asyncio.sleep(0.3)
    with redis_clean.client() as client:
        used = int(client.get(quota_key(limit, "total")) or 0)
    assert used <= 10_000


async def test_hundreds_of_concurrent_first_requests_share_a_quota_exactly(
        fleet: SimFleet) -> None:
    limit = Limit("key-quota", KEY, parse_quota("300/day"))
    results = await asyncio.gather(*(fleet.limiters[i % 6].check([limit], KEY)
                                     for i in range(900)))
    admitted = sum(d.admitted for d in results)
    assert admitted <= 300
    assert {d.reason for d in results if not d.admitted} <= {"quota_exhausted", "rate_limited"}


async def test_usage_counts_reach_redis(fleet: SimFleet, redis_clean: RedisServer) -> None:
    limit = Limit("key", KEY, parse_rate("50/s"))
    tally = Tally()
    await fleet.offer([limit], 200, 1.5, tally)
    await fleet.stop()
    fleet.alive = []
    day = period_label("day", time.time())
    with redis_clean.client() as client:
        counts = {k.decode(): int(v) for k, v in client.hgetall(usage_key(KEY, day)).items()}
        ttl = client.ttl(usage_key(KEY, day))
    assert sum(v for k, v in counts.items() if k.endswith(":ok")) == tally.total()
    assert sum(v for k, v in counts.items() if k.endswith(":rate_limited")) == \
        tally.refused["rate_limited"]
    assert 7 * 86_400 < ttl <= 8 * 86_400
    client = connect(redis_clean.url, 0.5)
    try:
        usage = await read_usage(client, KEY, time.time())
    finally:
        await client.aclose()
    assert sum(m.get("ok", 0) for m in usage.values()) == tally.total()
    assert all(len(minute) == len("2026-12-03T12:00") for minute in usage)


# -- Redis stopped and started again mid-run


async def test_outage_enforces_shares_and_reconciles_quota_counts(
        persistent_redis: RedisServer) -> None:
    fleet = await make_fleet(persistent_redis.url)
    rate = Limit("key", KEY, parse_rate("100/s"))
    daily = Limit("key-quota", KEY, parse_quota("1000000/day"))
    total = Limit("key-total", "gw:key:other", parse_quota("1000000"))
    during: list[str | None] = []

    def total_quota_request() -> None:
        during.append(fleet.limiters[0].decide([total]).reason)

    tally = Tally()
    try:
        await fleet.offer([rate, daily], 500, 6.0, tally,
                          events={2.0: persistent_redis.stop, 3.0: total_quota_request,
                                  4.0: persistent_redis.start})
    finally:
        await fleet.stop()
    # Every worker at its share of the limit: the shares add up to about one (plus the floor
    # of workers that had almost none).
    assert all(60 <= tally.admitted[s] <= 130 for s in (2, 3)), dict(tally.admitted)
    # What was admitted during the outage was taken from the bucket: no full burst after it
    # (second 4 holds the end of the outage and the first syncs after it).
    assert tally.admitted[4] <= 150, dict(tally.admitted)
    assert_steady(tally, 100, range(5, 6), mean=False)
    assert during == ["key_store_unavailable"]  # a total quota fails closed
    with persistent_redis.client() as client:
        day_used = int(client.get(quota_key(daily, period_label("day", time.time()))) or 0)
    # The daily quota failed open and its outage counts were added back: Redis counts every
    # admission, never fewer. It may count more: a call whose answer was lost as Redis went
    # away or came back (or that the client's one retry sent twice) leaves its grant unspent
    # and its owed count counted again: under-use, the safe side (measured: 1.6% to 5.2%).
    assert tally.total() <= day_used <= tally.total() * 1.10, (day_used, tally.total())


# -- Redis Cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterTopology]:
    missing = topology_binaries_missing()
    if missing:
        pytest.skip(missing)
    with ClusterTopology() as topology:
        yield topology


async def test_fleet_on_a_cluster_keeps_the_rate_and_quota(cluster: ClusterTopology) -> None:
    cluster.flush()
    fleet = await make_fleet(cluster.url)
    accounts = [f"gw:account:acct-{i}" for i in range(8)]  # spread over the masters
    limits = [Limit("key", KEY, parse_rate("100/s")),
              Limit("account-quota", accounts[0], parse_quota("100000/month"))]
    tally = Tally()
    try:
        await fleet.offer(limits, 500, 4.0, tally)
        others = await asyncio.gather(*(fleet.limiters[i % 6].check(
            [Limit("account", a, parse_rate("5/s"))], a) for i, a in enumerate(accounts * 4)))
    finally:
        await fleet.stop()
    # Per second only: three cluster nodes, six workers and the traffic share two CPUs here,
    # and a slow sync leaves a few tokens of a second unused (measured 90 and 97 once).
    assert_steady(tally, 100, range(2, 4), mean=False)
    assert sum(d.admitted for d in others) <= 8 * 5 * 2  # each account within its burst(s)
    slots = {cluster.key_slot(k) for k in (quota_key(limits[1], "x"), accounts[0])}
    assert len(slots) == 1  # an account's counters in the account record's slot
