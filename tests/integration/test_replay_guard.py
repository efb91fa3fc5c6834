"""Nonce claims (gateway/keys/nonces.py) on a real Redis: claims made together share a
round trip (one script call) and still give exactly one winner per nonce; a store that is down fails
every waiter with StoreUnavailable, none of them left hanging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from redis.credentials import CredentialProvider

from gateway.errors import StoreUnavailable
from gateway.keys.nonces import ReplayGuard
from gateway.store.client import connect
from tests.support.redis_server import RedisServer


@asynccontextmanager
async def guard_on(server: RedisServer, store_timeout: float) -> AsyncIterator[ReplayGuard]:
    # Closed even when the test fails: a connection left open makes the loop's close hang.
    redis = connect(server.url, store_timeout)
    guard = ReplayGuard(redis)
    try:
        yield guard
    finally:
        guard.close()
        await redis.aclose()


async def test_concurrent_claims_give_one_winner_per_nonce(redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 2.0) as guard:
        nonces = [f"n{i}" for i in range(300)]
        before = redis_clean.command_stats()
        results = await asyncio.gather(*(guard.claim("key1", n, 60) for n in nonces + nonces))
        assert results[:300] == [True] * 300  # first claims, in order, all within one batch
        assert results[300:] == [False] * 300
        after = redis_clean.command_stats()
        assert after.get("set", 0) - before.get("set", 0) == 600  # Redis counts a script's SETs
        calls = sum(after.get(c, 0) - before.get(c, 0) for c in ("evalsha", "eval"))
        # Two batches: 512 (MAX_BATCH) at once, then the other 88. On a fresh Redis the first
        # meets NOSCRIPT and is sent again as EVAL, which caches the script.
        assert 2 <= calls <= 3
        with redis_clean.client() as direct:
            ttls = [direct.pttl(name) for name in direct.keys("gw:nonce:key1:*")]
        assert len(ttls) == 300 and all(50_000 < ttl <= 60_000 for ttl in ttls)
        # The same nonce under another key is another claim; a later claim still loses.
        assert await guard.claim("key2", "n0", 60) is True
        assert await guard.claim("key1", "n0", 60) is False


async def test_a_claim_expires_with_its_ttl(redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 2.0) as guard:
        assert await guard.claim("key1", "warm", 60)  # the connection is open, the script known
        assert await guard.claim("key1", "short", 1)  # alone
        assert await asyncio.gather(guard.claim("key1", "a", 1),
                                    guard.claim("key1", "b", 1)) == [True, True]  # together
        assert await guard.claim("key1", "short", 1) is False
        await asyncio.sleep(1.3)
        assert await guard.claim("key1", "short", 1)  # the window has passed
        assert await asyncio.gather(guard.claim("key1", "a", 1),
                                    guard.claim("key1", "b", 1)) == [True, True]


async def test_a_batch_keeps_its_nonces_for_its_longest_lifetime(
        redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 2.0) as guard:
        assert await asyncio.gather(guard.claim("key1", "brief", 5),
                                    guard.claim("key1", "long", 60)) == [True, True]
        with redis_clean.client() as direct:
            ttls = [direct.pttl(name) for name in direct.keys("gw:nonce:key1:*")]
        assert len(ttls) == 2 and all(50_000 < ttl <= 60_000 for ttl in ttls)


async def test_a_store_that_is_down_fails_every_waiter_and_claims_work_once_it_is_back(
        own_redis: RedisServer) -> None:
    async with guard_on(own_redis, 0.5) as guard:
        assert await guard.claim("key1", "before", 60)
        own_redis.stop()
        results = await asyncio.wait_for(asyncio.gather(
            *(guard.claim("key1", f"n{i}", 60) for i in range(20)), return_exceptions=True), 10)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        with pytest.raises(StoreUnavailable):
            await guard.claim("key1", "alone", 60)
        own_redis.start()  # an empty store (not persistent), on the same socket
        assert await asyncio.gather(guard.claim("key1", "after", 60),
                                    guard.claim("key1", "after", 60)) == [True, False]


async def test_a_connection_redis_closed_while_idle_is_opened_afresh(
        redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 2.0) as guard:
        assert await guard.claim("k", "first", 60)
        with redis_clean.client() as admin:
            killed = admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        # Once the loop has seen the close (a claim written in the very instant Redis closes
        # the connection fails, as it would through redis-py's pool).
        for _ in range(500):
            if not guard._connection.is_open:
                break
            await asyncio.sleep(0.01)
        assert not guard._connection.is_open
        assert await guard.claim("k", "second", 60)  # no claim lost to the closed connection
        assert await guard.claim("k", "first", 60) is False


async def test_claims_work_after_redis_forgets_the_script(redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 2.0) as guard:
        assert await guard.claim("k", "before", 60)
        with redis_clean.client() as admin:
            admin.script_flush()
        assert await asyncio.gather(guard.claim("k", "a", 60), guard.claim("k", "before", 60)) \
            == [True, False]


async def test_an_error_reply_fails_the_batch_and_later_claims_still_work(
        redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 2.0) as guard:
        assert await guard.claim("k", "x", 60)
        with redis_clean.client() as admin:
            # A nonce key that holds something else makes SET ... NX answer 0, not fail; an
            # out-of-memory store refuses the write outright.
            admin.config_set("maxmemory", 1)
            try:
                with pytest.raises(StoreUnavailable, match="OOM"):
                    await guard.claim("k", "refused", 60)
            finally:
                admin.config_set("maxmemory", 0)
        assert await guard.claim("k", "refused", 60)


async def test_closing_fails_the_claims_still_out(redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 5.0) as guard:
        assert await guard.claim("k", "warm", 60)
        with redis_clean.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            try:
                out = asyncio.ensure_future(guard.claim("k", "held", 60))
                await asyncio.sleep(0.05)
                queued = asyncio.ensure_future(guard.claim("k", "queued", 60))
                await asyncio.sleep(0)
                guard.close()
                for claim in (out, queued):
                    with pytest.raises(StoreUnavailable):
                        await asyncio.wait_for(claim, 2)
                with pytest.raises(StoreUnavailable, match="closing"):
                    await asyncio.wait_for(guard.claim("k", "later", 60), 2)
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")


async def test_closing_while_the_connection_opens_answers_the_claims(
        redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 5.0) as guard:
        claim = guard.claim("k", "first", 60)
        await asyncio.sleep(0)  # the opening is scheduled, and has not run yet
        guard.close()
        with pytest.raises(StoreUnavailable, match="closing"):
            await asyncio.wait_for(claim, 2)
        with pytest.raises(StoreUnavailable, match="closing"):
            await asyncio.wait_for(guard.claim("k", "second", 60), 2)
    with redis_clean.client() as direct:
        assert direct.keys("gw:nonce:*") == []


class FailingCredentials(CredentialProvider):
    """Credentials that cannot be had: an error that is not the store's."""

    def get_credentials(self) -> tuple[str]:
        raise RuntimeError("vault sealed")

    async def get_credentials_async(self) -> tuple[str]:
        raise RuntimeError("vault sealed")


async def test_any_error_while_opening_answers_the_claims_and_the_next_ones_try_again(
        redis_clean: RedisServer) -> None:
    redis = aioredis.Redis(unix_socket_path=str(redis_clean.socket_path),
                           credential_provider=FailingCredentials(), socket_timeout=2.0)
    guard = ReplayGuard(redis)
    try:
        for nonce in ("first", "second"):  # the first failure left nothing stuck
            with pytest.raises(StoreUnavailable, match="vault sealed"):
                await asyncio.wait_for(guard.claim("k", nonce, 60), 2)
    finally:
        guard.close()
        await redis.aclose()


async def test_claims_made_while_a_batch_is_out_go_together_in_the_next(
        redis_clean: RedisServer) -> None:
    async with guard_on(redis_clean, 5.0) as guard:
        assert await asyncio.gather(guard.claim("k", "warm-1", 60), guard.claim("k", "warm-2", 60))
        with redis_clean.client() as direct:
            # Holds the first batch until UNPAUSE (the pause itself outlasts any slow machine).
            direct.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
            try:
                first = asyncio.ensure_future(guard.claim("k", "first", 60))
                await asyncio.sleep(0.05)  # it is out, waiting on Redis
                before = redis_clean.command_stats()
                later = []
                for i in range(40):  # one per loop turn: without the rule, 40 round trips
                    later.append(asyncio.ensure_future(guard.claim("k", f"later-{i}", 60)))
                    await asyncio.sleep(0)
            finally:
                direct.execute_command("CLIENT", "UNPAUSE")
            results = await asyncio.gather(first, *later)
        assert results == [True] * 41
        after = redis_clean.command_stats()
        # Two script calls: the first claim's (held by the pause, so counted after `before`) and
        # one for the 40 together.
        assert after.get("evalsha", 0) - before.get("evalsha", 0) == 2
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
