"""`last_used_at` at scale (SPEC §7): one string per key beside its record, merged forward-only
by bounded script calls; a deleted key's pending use is never written back; a backlog after an
outage is written in bounded round trips without stalling Redis for anyone else; the old
single-hash layout is migrated in place. Real Redis throughout.

The measured scenario prints its figures (the project runs no timing assertions): what it
asserts is completeness and the size of each call."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from gateway.errors import StoreUnavailable
from gateway.keys.layout import (
    LAST_USED,
    LAYOUT,
    PAIRS_PER_CALL,
    PAIRS_PER_ROUND,
    Flushed,
    last_used_key,
)
from gateway.keys.store import KeyStore
from gateway.keys.usage import UsageRecorder
from gateway.store.client import connect
from tests.conftest import new_key, service_for
from tests.support.redis_server import RedisServer

WORKERS = 8
PER_WORKER = 50_000
PROBE_EVERY = 0.005


def placeholder_records(server: RedisServer, ids: list[str]) -> None:
    """Key records for last-use tests, written straight in: the merge only asks whether a
    record exists, and 400,000 keys through the service would take minutes."""
    with server.client() as client:
        for start in range(0, len(ids), 10_000):
            pipe = client.pipeline(transaction=False)
            for key_id in ids[start:start + 10_000]:
                pipe.set(f"gw:key:{key_id}", b"{}")
            pipe.execute()


def stored_times(server: RedisServer, ids: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    with server.client() as client:
        for start in range(0, len(ids), 10_000):
            part = ids[start:start + 10_000]
            for key_id, value in zip(part, client.mget([last_used_key(i) for i in part]),
                                     strict=True):
                if value is not None:
                    found[key_id] = float(value)
    return found


def script_calls(server: RedisServer) -> int:
    """Script calls that ran (a NOSCRIPT answer, before the script is loaded, does not)."""
    with server.client() as client:
        stats = client.info("commandstats")
    return sum(int(stats[name]["calls"]) - int(stats[name].get("failed_calls", 0))
               for name in ("cmdstat_evalsha", "cmdstat_eval") if name in stats)


@pytest.fixture
def slowlog_everything(redis_clean: RedisServer) -> Any:
    """Every command in the SLOWLOG for this test (its size and duration), as before after."""
    with redis_clean.client() as client:
        saved = client.config_get("slowlog-*")
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)
        client.slowlog_reset()
    yield redis_clean
    with redis_clean.client() as client:
        for name, value in saved.items():
            client.config_set(name, value)
        client.slowlog_reset()


def largest_script_calls(server: RedisServer) -> tuple[int, int]:
    """From the SLOWLOG (every command logged): the most time pairs one script call carried,
    and the longest one call took (µs)."""
    with server.client() as client:
        entries = client.slowlog_get(100_000)
    pairs, longest = 0, 0
    for entry in entries:
        command = entry["command"].split()
        if command[0].upper() not in (b"EVALSHA", b"EVAL"):
            continue
        # A logged command shows 32 arguments at most, then "... (N more arguments)".
        shown = entry["command"]
        more = int(shown.rsplit(b"(", 1)[1].split()[0]) if shown.endswith(b"arguments)") else 0
        total = (32 - 1 + more) if more else len(command)
        pairs = max(pairs, (total - 3) // 3)  # EVALSHA sha numkeys, then 2 keys + 1 time each
        longest = max(longest, int(entry["duration"]))
    return pairs, longest


@pytest.fixture
async def store(redis_clean: RedisServer) -> AsyncIterator[KeyStore]:
    client = connect(redis_clean.url, 2.0)
    yield KeyStore(client)
    await client.aclose()


# -- correctness ---------------------------------------------------------------------------------


async def test_a_deleted_keys_pending_last_use_is_not_written_back(redis_clean, key_service
                                                                    ) -> None:
    kept, _, account = await new_key(key_service)
    deleted, _, _ = await new_key(key_service, account=account)
    recorder = UsageRecorder(key_service.store, interval=60)
    now = time.time()
    recorder.record(kept.id, now)
    recorder.record(deleted.id, now)
    await key_service.delete_key(deleted.id)

    await recorder.flush()
    assert recorder.pending == 0
    assert await key_service.last_used(kept.id) == pytest.approx(now, abs=0.002)
    assert await key_service.last_used(deleted.id) is None
    with redis_clean.client() as client:
        assert not client.exists(last_used_key(deleted.id))
    # And through the store: a time for a key that is gone is confirmed, not written.
    assert await key_service.store.record_last_used({deleted.id: now + 1, kept.id: now + 1}) \
        == {kept.id: now + 1}


async def test_only_a_later_time_is_written(store, redis_clean) -> None:
    placeholder_records(redis_clean, ["ak_a"])
    assert await store.record_last_used({"ak_a": 2000.5}) == {"ak_a": 2000.5}
    assert await store.record_last_used({"ak_a": 1000.0}) == {}
    assert await store.record_last_used({"ak_a": 2000.5}) == {}  # a resend changes nothing
    assert await store.last_used("ak_a") == 2000.5


async def test_calls_are_bounded_and_a_backlog_goes_out_in_bounded_round_trips(
        store, redis_clean, slowlog_everything) -> None:
    ids = [f"ak_bounded{n:06d}" for n in range(20_000)]
    placeholder_records(redis_clean, ids)
    before = script_calls(redis_clean)
    now = time.time()
    rounds: list[Flushed] = [r async for r in store.write_last_used({i: now for i in ids})]

    assert script_calls(redis_clean) - before == math.ceil(len(ids) / PAIRS_PER_CALL)
    assert len(rounds) == math.ceil(len(ids) / PAIRS_PER_ROUND)
    assert all(len(r.confirmed) <= PAIRS_PER_ROUND for r in rounds)
    assert sum(len(r.written) for r in rounds) == len(ids)
    pairs, longest = largest_script_calls(redis_clean)
    assert pairs == PAIRS_PER_CALL
    print(f"\n{len(ids)} last uses: {len(rounds)} round trips, "
          f"{script_calls(redis_clean) - before} script calls of at most {pairs} times, "
          f"longest call {longest} µs")
    assert len(stored_times(redis_clean, ids)) == len(ids)


class StopsRedisAfterOneRound(KeyStore):
    """The real store, whose Redis goes away (kill -9) once the first round trip of a flush
    has been confirmed, while `stopping`: the rest of that flush fails for real."""

    server: RedisServer
    stopping = True

    async def write_last_used(self, times: Mapping[str, float]  # type: ignore[override]
                              ) -> AsyncIterator[Flushed]:
        rounds = 0
        async for flushed in super().write_last_used(times):
            yield flushed
            rounds += 1
            if rounds == 1 and self.stopping:
                self.server.stop()


async def test_a_flush_after_redis_was_away_writes_everything(persistent_redis) -> None:
    ids = [f"ak_outage{n:05d}" for n in range(10_000)]
    placeholder_records(persistent_redis, ids)
    client = connect(persistent_redis.url, 1.0)
    store = StopsRedisAfterOneRound(client)
    store.server = persistent_redis
    recorder = UsageRecorder(store, interval=60)
    now = time.time()
    try:
        for n, key_id in enumerate(ids):
            recorder.record(key_id, now + n / 1000)

        with pytest.raises(StoreUnavailable):
            await recorder.flush()
        # What Redis confirmed before it went away is not kept for a resend; the rest is.
        assert recorder.pending == len(ids) - PAIRS_PER_ROUND
        with pytest.raises(StoreUnavailable):
            await recorder.flush()  # still away: nothing lost
        assert recorder.pending == len(ids) - PAIRS_PER_ROUND
        recorder.record(ids[-1], now + 3600)  # a later use meanwhile wins over the kept one

        persistent_redis.start()  # its script cache is empty now: NOSCRIPT, load, resend
        store.stopping = False
        await recorder.flush()
        assert recorder.pending == 0
        stored = stored_times(persistent_redis, ids)
        assert len(stored) == len(ids)
        expected = {key_id: now + n / 1000 for n, key_id in enumerate(ids)}
        expected[ids[-1]] = now + 3600
        assert stored == pytest.approx(expected, abs=0.002)
    finally:
        await client.aclose()


# -- migration from the single hash --------------------------------------------------------------


async def test_old_layout_data_reads_back_after_concurrent_migrations(redis_clean,
                                                                      key_service) -> None:
    first, _, account = await new_key(key_service)
    second, _, _ = await new_key(key_service, account=account)
    third, _, _ = await new_key(key_service, account=account)
    many = [f"ak_old{n:05d}" for n in range(5_000)]
    placeholder_records(redis_clean, many)
    with redis_clean.client() as client:
        # As a gateway of layout 1 left it: one hash of every key's last use, including a
        # key deleted since (its field was never removed).
        client.hset(LAST_USED, mapping={first.id: "1000.250", second.id: "2000.500",
                                        third.id: "3000.000", "ak_deletedlongago": "4000.0",
                                        **{i: f"{5000 + n}.125" for n, i in enumerate(many)}})
        # A gateway of layout 2 already recorded a later use of `third`.
        client.set(last_used_key(third.id), "3500.000")

    async def shown() -> dict[str, Any]:
        page = await key_service.list_keys(account_id=account.id)
        return {item["id"]: item["last_used_at"] for item in page.items}

    before = await shown()
    assert await key_service.last_used(first.id) == 1000.25
    assert await key_service.last_used(third.id) == 3500.0

    stores = [await service_for(redis_clean.url) for _ in range(3)]
    try:
        moved = await asyncio.gather(*(s.store.migrate() for s, _ in stores))
    finally:
        for _, client in stores:
            await client.aclose()
    assert sum(moved) == len(many) + 4  # every field dropped once, by one of them

    assert await shown() == before
    assert await key_service.last_used(first.id) == 1000.25
    assert await key_service.last_used(second.id) == 2000.5
    assert await key_service.last_used(third.id) == 3500.0  # the later time kept
    assert await key_service.store.last_used_many(many) == {
        i: 5000 + n + 0.125 for n, i in enumerate(many)}
    with redis_clean.client() as client:
        assert not client.exists(LAST_USED)
        assert client.get(LAYOUT) == b"2"
        assert not client.exists(last_used_key("ak_deletedlongago"))

    # Once done, cheap: one HSCAN of nothing and the layout mark.
    commands = redis_clean.command_stats()
    assert await key_service.store.migrate() == 0
    after = redis_clean.command_stats()
    assert {n: after[n] - commands.get(n, 0) for n in after
            if after[n] != commands.get(n, 0) and n != "info"} == {"hscan": 1, "set": 1}


# -- the measured scenario -----------------------------------------------------------------------

_PROBE = textwrap.dedent("""
    import json, socket, sys, time
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    every = float(sys.argv[2])
    samples = []
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sock.setblocking(True)
    import select
    while not select.select([sys.stdin], [], [], 0)[0]:
        start = time.perf_counter()
        sock.sendall(b"PING\\r\\n")
        reply = b""
        while not reply.endswith(b"\\r\\n"):
            reply += sock.recv(64)
        samples.append(time.perf_counter() - start)
        time.sleep(every)
    samples.sort()
    print(json.dumps({"count": len(samples), "max": samples[-1],
                      "p99": samples[int(len(samples) * 0.99) - 1]}))
""")


@pytest.mark.slow
async def test_eight_workers_with_a_50k_backlog_each(redis_clean, slowlog_everything) -> None:
    """8 workers come back from an outage with 50,000 keys' last use each: everything is
    written, in bounded calls, while another client's PING is sampled every 5 ms (in a process
    of its own, so that this event loop's own work does not count)."""
    ids = [[f"ak_w{w}k{n:05d}" for n in range(PER_WORKER)] for w in range(WORKERS)]
    placeholder_records(redis_clean, [i for worker in ids for i in worker])
    clients = [connect(redis_clean.url, 1.0) for _ in range(WORKERS)]
    recorders = [UsageRecorder(KeyStore(c), interval=60) for c in clients]
    now = time.time()
    for recorder, worker in zip(recorders, ids, strict=True):
        for key_id in worker:
            recorder.record(key_id, now)

    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, str(redis_clean.socket_path), str(PROBE_EVERY),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert probe.stdout is not None and await probe.stdout.readline() == b"ready\n"
        await asyncio.sleep(0.2)  # a baseline before the flushes
        started = time.perf_counter()
        await asyncio.gather(*(r.flush() for r in recorders))
        took = time.perf_counter() - started
        await asyncio.sleep(0.1)
    finally:
        out, _ = await asyncio.wait_for(probe.communicate(b"stop\n"), 30)
        figures: dict[str, Any] = json.loads(out)
        for c in clients:
            await c.aclose()

    assert all(r.pending == 0 for r in recorders)
    total = WORKERS * PER_WORKER
    assert len(stored_times(redis_clean, [i for worker in ids for i in worker])) == total
    pairs, longest = largest_script_calls(redis_clean)
    assert pairs <= PAIRS_PER_CALL
    print(f"\n{total} pending last uses from {WORKERS} workers written in {took:.2f} s; "
          f"PING every {PROBE_EVERY * 1000:.0f} ms meanwhile: {figures['count']} samples, "
          f"max {figures['max'] * 1000:.1f} ms, p99 {figures['p99'] * 1000:.1f} ms; "
          f"largest script call {pairs} times, longest {longest / 1000:.2f} ms")
    assert took < 60, "far beyond the 10 s target"  # loose: a bound, not a benchmark
