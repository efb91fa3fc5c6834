"""Nonce claims (gateway/keys/nonces.py) on a real Redis: claims made together share a
round trip (one script call) and still give exactly one winner per nonce; a store that is down fails
every waiter with StoreUnavailable, none of them left hanging."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StoreUnavailable
from gateway.keys.nonces import ReplayGuard
from gateway.store.client import connect
from tests.support.redis_server import RedisServer


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
