"""Brute-force protection shared through a real Redis: two FailureThrottle instances, each with
its own InvalidationListener and connection pool, as two workers (or two instances) have."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest

from gateway.auth.apikey import hash_secret
from gateway.auth.throttle import BLOCKS, FailureThrottle, block_key, count_key
from gateway.config import BruteForceConfig, KeysConfig
from gateway.errors import StoreError
from gateway.keys.cache import InvalidationListener, KeyCache
from gateway.keys.store import KeyStore
from gateway.store.client import Redis, connect
from tests.conftest import new_key, service_for
from tests.support.redis_server import RedisServer

CLIENT = "203.0.113.7"
OTHER = "198.51.100.1"
WAIT = 5.0  # bound on waiting for a pub/sub message or a background flush


class WindowClock:
    """Wall-clock time, shifted so that the test starts `into` seconds after the start of a
    `window`-long window: counts made together never straddle a window boundary by chance.
    Every worker of a test shares one."""

    def __init__(self, window: float, into: float = 0.05) -> None:
        now = time.time()
        self.offset = (math.floor(now / window) + 1) * window + into - now

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Worker:
    redis: Redis
    throttle: FailureThrottle
    cache: KeyCache
    listener: InvalidationListener


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker() -> AsyncIterator[StartWorker]:
    async with AsyncExitStack() as stack:

        async def start(url: str, config: BruteForceConfig, clock: Callable[[], float], *,
                        flushing: bool = False, listening: bool = True,
                        interval: float = 0.05, workers: int = 1) -> Worker:
            redis = connect(url, 0.5)
            stack.push_async_callback(redis.aclose)
            throttle = FailureThrottle(redis, config, clock, interval=interval,
                                       workers=workers)
            cache = KeyCache(KeyStore(redis), KeysConfig())
            listener = InvalidationListener(redis, cache,
                                            handlers={BLOCKS: throttle.handle_message})
            if listening:
                listener.start()
                stack.push_async_callback(listener.stop)
                await asyncio.wait_for(listener.subscribed.wait(), WAIT)
            if flushing:
                throttle.start()
                stack.push_async_callback(throttle.close)
            return Worker(redis, throttle, cache, listener)

        yield start


async def until(condition: Callable[[], object], what: str, limit: float = WAIT) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit}s: {what}"
        await asyncio.sleep(0.01)


def fail(worker: Worker, client: str, times: int) -> None:
    for _ in range(times):
        worker.throttle.record_failure(client)


async def test_failures_split_across_workers_pass_the_shared_limit(
        redis_clean: RedisServer, start_worker: StartWorker) -> None:
    config = BruteForceConfig(max_failures=10, window=60.0, block_for=60.0)
    clock = WindowClock(config.window)
    a = await start_worker(redis_clean.url, config, clock)
    b = await start_worker(redis_clean.url, config, clock)
    fail(a, CLIENT, 6)
    await a.throttle.flush()
    fail(b, CLIENT, 4)
    # Neither worker alone has seen ten failures.
    assert a.throttle.retry_after(CLIENT) is None
    assert b.throttle.retry_after(CLIENT) is None
    await b.throttle.flush()  # the shared total reaches ten: blocked and announced
    assert b.throttle.retry_after(CLIENT) is not None
    # `a` never flushed again: only the announcement can tell it.
    await until(lambda: a.throttle.retry_after(CLIENT) is not None, "announcement reached a")
    left = a.throttle.retry_after(CLIENT)
    assert left is not None and 50 < left <= 60
    assert a.throttle.retry_after(OTHER) is None and b.throttle.retry_after(OTHER) is None
    with redis_clean.client() as direct:
        counter = count_key(int(clock() // config.window), CLIENT)
        assert direct.get(counter) == b"10"
        assert 0 < direct.pttl(counter) <= 61_000  # nothing is kept for ever
        assert 50_000 < direct.pttl(block_key(CLIENT)) <= 60_000


async def test_the_local_count_blocks_without_waiting_for_a_flush(
        redis_clean: RedisServer, start_worker: StartWorker) -> None:
    config = BruteForceConfig(max_failures=5, window=60.0, block_for=60.0)
    clock = WindowClock(config.window)
    a = await start_worker(redis_clean.url, config, clock)
    b = await start_worker(redis_clean.url, config, clock)
    fail(a, CLIENT, 5)
    assert a.throttle.retry_after(CLIENT) is not None
    assert b.throttle.retry_after(CLIENT) is None  # not shared yet
    await a.throttle.flush()
    await until(lambda: b.throttle.retry_after(CLIENT) is not None, "announcement reached b")


async def test_a_block_expires_everywhere(redis_clean: RedisServer,
                                          start_worker: StartWorker) -> None:
    config = BruteForceConfig(max_failures=3, window=4.0, block_for=0.5)
    clock = WindowClock(config.window)
    window_ends = (clock() // config.window + 1) * config.window
    a = await start_worker(redis_clean.url, config, clock, flushing=True)
    b = await start_worker(redis_clean.url, config, clock, flushing=True)
    fail(a, CLIENT, 2)
    fail(b, CLIENT, 1)
    await until(lambda: a.throttle.retry_after(CLIENT) is not None
                and b.throttle.retry_after(CLIENT) is not None, "blocked on both")
    await until(lambda: a.throttle.retry_after(CLIENT) is None
                and b.throttle.retry_after(CLIENT) is None, "unblocked on both")
    with redis_clean.client() as direct:
        # Redis times the key from when the script ran, a moment after the `now` the workers
        # time their blocks from: it may outlive them by that moment, not by more.
        await until(lambda: not direct.exists(block_key(CLIENT)), "block key gone", 0.5)
    if clock() < window_ends - 1.5:  # (a very slow machine may be past it)
        # Still the same window, still past the limit: the next failure blocks again.
        fail(a, CLIENT, 1)
        await until(lambda: b.throttle.retry_after(CLIENT) is not None, "blocked again")
        await until(lambda: b.throttle.retry_after(CLIENT) is None, "unblocked again")
    # In the next window the address starts afresh: two failures are below the limit.
    await until(lambda: clock() >= window_ends, "the next window")
    fail(a, CLIENT, 2)
    await a.throttle.flush()
    assert a.throttle.retry_after(CLIENT) is None


async def test_a_worker_that_missed_the_announcement_learns_it_at_its_next_flush(
        redis_clean: RedisServer, start_worker: StartWorker) -> None:
    config = BruteForceConfig(max_failures=5, window=60.0, block_for=60.0)
    clock = WindowClock(config.window)
    a = await start_worker(redis_clean.url, config, clock)
    deaf = await start_worker(redis_clean.url, config, clock, listening=False)
    fail(a, CLIENT, 5)
    await a.throttle.flush()
    assert deaf.throttle.retry_after(CLIENT) is None
    fail(deaf, CLIENT, 1)  # one more failure here, far below the limit locally
    assert deaf.throttle.retry_after(CLIENT) is None
    await deaf.throttle.flush()
    left = deaf.throttle.retry_after(CLIENT)
    assert left is not None and left > 50  # the block's own end, not a new one


async def test_the_block_channel_shares_the_invalidation_subscription(
        redis_clean: RedisServer, start_worker: StartWorker) -> None:
    worker = await start_worker(redis_clean.url, BruteForceConfig(), time.time)
    service, redis = await service_for(redis_clean.url)
    try:
        key, secret, _ = await new_key(service)
        assert (await worker.cache.api_key(hash_secret(secret)))[0] is not None
        assert worker.cache.sizes[0] == 1
        # A malformed block message is ignored; the subscription carries on.
        await redis.publish(BLOCKS, b"garbage")
        await service.delete_key(key.id)
        await until(lambda: worker.cache.sizes[0] == 0, "invalidation reached the cache")
        await redis.publish(BLOCKS, b'{"client": "%s", "until_ms": %d}'
                            % (CLIENT.encode(), int((time.time() + 60) * 1000)))
        await until(lambda: worker.throttle.retry_after(CLIENT) is not None, "block applied")
        assert worker.listener.subscribed.is_set()
    finally:
        await redis.aclose()


async def test_a_store_that_is_down_breaks_nothing(own_redis: RedisServer,
                                                   start_worker: StartWorker,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.auth.throttle")
    config = BruteForceConfig(max_failures=50, window=600.0, block_for=60.0)
    clock = WindowClock(config.window)
    worker = await start_worker(own_redis.url, config, clock, flushing=True, listening=False)
    throttle = worker.throttle
    own_redis.stop()
    fail(worker, OTHER, 20)
    with pytest.raises(StoreError):
        await throttle.flush()
    assert throttle.sizes[1] == 1  # the count is kept for the next flush
    await until(lambda: "cannot be shared" in caplog.text, "the outage logged")
    for _ in range(5):  # a few more failed background flushes
        fail(worker, CLIENT, 10)
        await asyncio.sleep(throttle.interval * 2)
    # Local blocking goes on: fifty failures seen here alone.
    assert throttle.retry_after(CLIENT) is not None
    assert throttle.retry_after(OTHER) is None
    own_redis.start()
    window = int(clock() // config.window)
    with own_redis.client() as direct:
        await until(lambda: direct.get(count_key(window, OTHER)) == b"20"
                    and direct.get(count_key(window, CLIENT)) == b"50",
                    "kept counts shared")
        await until(lambda: direct.exists(block_key(CLIENT)), "the block stored")
    await until(lambda: "shared again" in caplog.text, "the recovery logged")
    warnings = [r for r in caplog.records if "cannot be shared" in r.getMessage()]
    assert len(warnings) == 1


async def test_redis_commands_per_failure_stay_far_below_one(
        redis_clean: RedisServer, start_worker: StartWorker) -> None:
    # A limit nobody reaches, so every failure keeps being counted and shared; flushes every
    # 50 ms (five times as often as in production, so more commands than in production).
    config = BruteForceConfig(max_failures=10_000_000, window=60.0, block_for=60.0)
    clock = WindowClock(config.window)
    worker = await start_worker(redis_clean.url, config, clock, flushing=True,
                                listening=False)
    clients = [f"198.51.100.{i}" for i in range(10)]
    failures = 0
    before = redis_clean.command_count()
    deadline = time.monotonic() + 1.0  # spans about twenty flushes
    while time.monotonic() < deadline:
        for client in clients:
            fail(worker, client, 100)
            failures += 100
        await asyncio.sleep(0.001)
    await worker.throttle.flush()
    commands = redis_clean.command_count() - before
    with redis_clean.client() as direct:
        window = int(clock() // config.window)
        shared = sum(int(direct.get(count_key(window, c)) or 0) for c in clients)
    assert shared == failures  # every failure was shared
    per_failure = commands / failures
    print(f"\n{failures} failures from {len(clients)} addresses: {commands} Redis commands, "
          f"{per_failure:.5f} per failure")
    assert per_failure < 0.01


async def test_two_workers_admit_the_limit_between_them_not_each(
        redis_clean: RedisServer, start_worker: StartWorker) -> None:
    """Issue 17, item 3: two workers of one instance lease their shares from the shared count,
    so failures alternating between them stop at the limit (before: each admitted the whole
    limit before a flush told it of the other's)."""
    config = BruteForceConfig(max_failures=30, window=60.0, block_for=60.0)
    clock = WindowClock(60.0)
    # The periodic flush is slow here (as at FLUSH_INTERVAL against a fast burst): only the
    # leases and the early flushes they call for can keep the count.
    workers = [await start_worker(redis_clean.url, config, clock, flushing=True,
                                  interval=5.0, workers=2) for _ in range(2)]
    admitted = 0
    deadline = time.monotonic() + 2.0
    turn = 0
    while time.monotonic() < deadline:
        throttle = workers[turn % 2].throttle
        turn += 1
        if throttle.held(CLIENT):
            await throttle.settled(CLIENT)  # as the proxy handler does
        if throttle.retry_after(CLIENT) is None:
            throttle.record_failure(CLIENT)
            admitted += 1
        await asyncio.sleep(0.0005)
    assert 30 <= admitted <= 31, admitted
    for worker in workers:
        assert worker.throttle.retry_after(CLIENT) is not None
        assert worker.throttle.retry_after(CLIENT) > 50  # the block, not a hold
    # Another address was never held nor blocked.
    assert all(w.throttle.retry_after(OTHER) is None for w in workers)


# -- stopping (issue 17, item 16) ------------------------------------------------------------------

STOP_BOUND = 10.0  # a bound on a hang: close() takes a store timeout at most, never for ever


async def ends_within(closing: Awaitable[None], bound: float) -> bool:
    """Whether `closing` ended within `bound` seconds (if not, it is cancelled)."""
    task = asyncio.ensure_future(closing)
    await asyncio.wait({task}, timeout=bound)
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    return False


async def stop_as_a_failure_wakes_the_flush(throttle: FailureThrottle) -> bool:
    """A failure counted in the loop turn in which the worker's shutdown stops the flushes:
    with two workers the failure asks for an early flush, so the wake-up and the cancellation
    reach the flush loop together (before, asyncio.wait_for returned the wake-up and lost the
    cancellation, and the loop flushed on for ever under a close() that never returned)."""
    throttle.start()
    await asyncio.sleep(0.05)  # the loop is waiting for its next flush
    throttle.record_failure(CLIENT)
    assert throttle.held(CLIENT)  # an early flush was asked for
    return await ends_within(throttle.close(), STOP_BOUND)


async def test_a_failure_as_the_flushes_stop_neither_hangs_close_nor_is_lost(
        redis_clean: RedisServer) -> None:
    redis = connect(redis_clean.url, 1.0)
    try:
        config = BruteForceConfig(max_failures=30)
        clock = WindowClock(config.window)
        throttle = FailureThrottle(redis, config, clock, workers=2)
        assert await stop_as_a_failure_wakes_the_flush(throttle), "close() hung"
        window = int(clock() // config.window)
        # close() shared what was left: the failure counts on the other workers.
        assert int(await redis.get(count_key(window, CLIENT)) or 0) == 1
    finally:
        await redis.aclose()


async def test_the_flushes_stop_on_a_store_that_never_answers(
        caplog: pytest.LogCaptureFixture) -> None:
    """The same stop while the store accepts connections and answers nothing (a hung or
    paused Redis): every flush blocks until the store's timeout. close() gives up its last
    flush after one timeout, and says so."""
    received = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            received.set()
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    redis = connect(f"redis://127.0.0.1:{listener.sockets[0].getsockname()[1]}/0", 1.0)
    try:
        throttle = FailureThrottle(redis, BruteForceConfig(max_failures=30), workers=2)
        with caplog.at_level(logging.INFO, "gateway.auth.throttle"):
            assert await stop_as_a_failure_wakes_the_flush(throttle), "close() hung"
        assert received.is_set()  # the last flush reached the store, which never answered
        assert "brute-force counts not shared at shutdown" in caplog.text
    finally:
        await redis.aclose()
        listener.close()
        await listener.wait_closed()
