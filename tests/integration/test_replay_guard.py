"""Nonce claims (gateway/keys/nonces.py) on a real Redis: claims made together share a
round trip (one script call) and still give exactly one winner per nonce; a store that is down fails
every waiter with StoreUnavailable, none of them left hanging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from gateway.errors import StoreUnavailable
from gateway.keys.nonces import ReplayGuard
from gateway.store.client import connect
from tests.support.redis_server import RedisServer


@asynccontextmanager
async def guard_on(server: RedisServer, store_timeout: float) -> AsyncIterator[ReplayGuard]:
    # Closed even when the test fails: a client left open makes the loop's close hang.
    redis = connect(server.url, store_timeout)
    try:
        yield ReplayGuard(redis)
    finally:
        await redis.aclose()


async def test_concurrent_claims_give_one_winner_per_nonce(redis_clean: RedisServer) -> None:
    redis = connect(redis_clean.url, 2.0)
    guard = ReplayGuard(redis)
    nonces = [f"n{i}" for i in range(300)]
    before = redis_clean.command_stats()
    results = await asyncio.gather(*(guard.claim("key1", n, 60) for n in nonces + nonces))
    assert results[:300] == [True] * 300  # first claims, in order, all within one batch
    assert results[300:] == [False] * 300
    after = redis_clean.command_stats()
    assert after.get("set", 0) - before.get("set", 0) == 600  # Redis counts a script's SETs
    calls = sum(after.get(c, 0) - before.get(c, 0) for c in ("evalsha", "eval"))
    # Two batches: 512 (MAX_BATCH) at once, then the other 88. On a fresh Redis each first
    # meets NOSCRIPT and is sent again after loading the script.
    assert 2 <= calls <= 4
    with redis_clean.client() as direct:
        ttls = [direct.pttl(name) for name in direct.keys("gw:nonce:key1:*")]
    assert len(ttls) == 300 and all(50_000 < ttl <= 60_000 for ttl in ttls)
    # The same nonce under another key is another claim; a later claim still loses.
    assert await guard.claim("key2", "n0", 60) is True
    assert await guard.claim("key1", "n0", 60) is False
    await redis.aclose()


async def test_a_claim_expires_with_its_ttl(redis_clean: RedisServer) -> None:
    redis = connect(redis_clean.url, 2.0)
    guard = ReplayGuard(redis)
    assert await guard.claim("key1", "short", 0.2)  # alone: a plain SET
    assert await asyncio.gather(guard.claim("key1", "a", 0.2), guard.claim("key1", "b", 0.2)) \
        == [True, True]  # together: the script
    assert await guard.claim("key1", "short", 0.2) is False
    await asyncio.sleep(0.5)
    assert await guard.claim("key1", "short", 0.2)  # the window has passed
    assert await asyncio.gather(guard.claim("key1", "a", 0.2), guard.claim("key1", "b", 0.2)) \
        == [True, True]
    await redis.aclose()


async def test_a_store_that_is_down_fails_every_waiter(own_redis: RedisServer) -> None:
    redis = connect(own_redis.url, 0.5)
    guard = ReplayGuard(redis)
    assert await guard.claim("key1", "before", 60)
    own_redis.stop()
    results = await asyncio.wait_for(asyncio.gather(
        *(guard.claim("key1", f"n{i}", 60) for i in range(20)), return_exceptions=True), 10)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    with pytest.raises(StoreUnavailable):
        await guard.claim("key1", "alone", 60)
    await redis.aclose()


async def test_claims_made_while_a_batch_is_out_go_together_in_the_next(
        redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 5.0) as guard:
        assert await asyncio.gather(guard.claim("k", "warm-1", 60), guard.claim("k", "warm-2", 60))
        with redis_clean.client() as direct:
            direct.execute_command("CLIENT", "PAUSE", "300", "WRITE")  # holds the first batch
            first = asyncio.ensure_future(guard.claim("k", "first", 60))
            await asyncio.sleep(0.05)  # it is out, waiting on Redis
            before = redis_clean.command_stats()
            later = []
            for i in range(40):  # one per loop turn: without the rule, 40 round trips
                later.append(asyncio.ensure_future(guard.claim("k", f"later-{i}", 60)))
                await asyncio.sleep(0)
            results = await asyncio.gather(first, *later)
        assert results == [True] * 41
        after = redis_clean.command_stats()
        assert after.get("evalsha", 0) - before.get("evalsha", 0) == 1  # the 40, together
        assert after.get("set", 0) - before.get("set", 0) == 41


async def test_claims_queued_behind_a_failing_batch_fail_with_it(own_redis: RedisServer) -> None:
    async with guard_on(own_redis, 0.5) as guard:
        assert await guard.claim("k", "before", 60)
        with own_redis.client() as direct:
            direct.execute_command("CLIENT", "PAUSE", "3000", "WRITE")  # past the 0.5 s timeout
            first = asyncio.ensure_future(guard.claim("k", "first", 60))
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(guard.claim("k", f"q{i}", 60)) for i in range(5)]
            results = await asyncio.gather(first, *queued, return_exceptions=True)
            direct.execute_command("CLIENT", "UNPAUSE")
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        # The very failure of the batch that was out: the queued claims were not sent on their
        # own to wait out a second timeout.
        assert all(r is results[0] for r in results)
