"""Connections to the store (SPEC §7, issue 16): a bounded pool that makes callers wait rather
than fail, a Redis restart that costs no 503 once Redis answers, exhaustion reported as such,
idle connections closed, and every connection named."""

from __future__ import annotations

import asyncio
import logging
import os

import aiohttp
import pytest
import redis as sync_redis
from prometheus_client import REGISTRY

from gateway.errors import PoolExhausted
from gateway.store.client import close_idle, connect, connection_count
from tests.conftest import api_key, make_config, new_key, service_for
from tests.support.redis_server import RedisServer


def _exhausted_total() -> float:
    return REGISTRY.get_sample_value("gateway_store_pool_exhausted_total") or 0.0


_BUSY = """
local t = redis.call('TIME')
local until_us = t[1] * 1000000 + t[2] + tonumber(ARGV[1])
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= until_us
return 1
"""


def _hold_redis(server: RedisServer, seconds: float) -> None:
    """Keep Redis busy (one script, which nothing interrupts) for `seconds`."""
    with server.client() as client:
        client.eval(_BUSY, 0, int(seconds * 1_000_000))


def _clients(server: RedisServer) -> list[dict[str, str]]:
    with server.client() as client:
        return [dict(c) for c in client.client_list()]


async def test_300_concurrent_cold_lookups_in_one_worker_wait_their_turn(
        redis_clean: RedisServer, start_gateway, upstream, http: aiohttp.ClientSession) -> None:
    """More cold lookups at once than the pool has connections: each waits for one (well
    within redis.timeout), none is answered 503. redis-py's own pool failed past 100."""
    service, client = await service_for(redis_clean.url)
    account = await service.create_account("cold")
    secrets = [(await service.create_key(account_id=account.id))[1] for _ in range(300)]
    await client.aclose()
    route = {"name": "echo", "prefix": "/echo/", "upstream": str(upstream.make_url(""))}
    gateway = await start_gateway(make_config(redis_clean.url, [route],
                                              redis={"url": redis_clean.url, "timeout": "2s",
                                                     "pool_size": 16}))
    before = _exhausted_total()

    # aiohttp's own default would keep only 100 requests in flight.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def one(secret: str) -> int:
        async with session.get(gateway.url + "/echo/x", headers=api_key(secret)) as response:
            return response.status

    # A slow moment of Redis (a 0.3 s script holds it) while the 300 arrive: they pile up
    # in the worker, all at once.
    slow = asyncio.ensure_future(asyncio.to_thread(_hold_redis, redis_clean, 0.3))
    await asyncio.sleep(0.05)
    try:
        statuses = await asyncio.gather(*(one(s) for s in secrets))
    finally:
        await session.close()
    await slow
    assert statuses.count(200) == 300, sorted(set(statuses))
    assert _exhausted_total() == before
    gate = gateway.running.redis.gate
    assert gate is not None and gate.peak == 16  # they did queue: every place was taken
    # Bounded by the gate (plus the subscription and the nonce connection's slack).
    assert connection_count(gateway.running.redis) <= 16 + 4


async def test_an_exhausted_pool_is_said_to_be_exhausted_not_an_outage(
        redis_clean: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """One connection and three commands that each hold it for the whole 0.3 s timeout: the
    first takes its turn, the last waits longer than it may and is told the pool is
    exhausted (a metric and a log line say so), not that the store is down."""
    redis = connect(redis_clean.url, 0.3, pool_size=1)
    before = _exhausted_total()
    try:
        with caplog.at_level(logging.WARNING, "gateway.store.client"):
            outcomes = await asyncio.gather(
                *(redis.execute_command("BLPOP", "gw:test:nothing", 5) for _ in range(3)),
                return_exceptions=True)
        exhausted = [o for o in outcomes if isinstance(o, PoolExhausted)]
        # The holder times out reading; the one behind it may or may not get its turn in time
        # (the holder lets go right at 0.3 s); the last one never does.
        assert 1 <= len(exhausted) <= 2, outcomes
        assert "pool exhausted: all 1 connections busy" in str(exhausted[0])
        assert _exhausted_total() == before + len(exhausted)
        assert any("pool exhausted" in r.getMessage() for r in caplog.records)
    finally:
        await redis.aclose()


async def test_a_redis_restart_costs_no_503_once_redis_answers(
        persistent_redis: RedisServer, start_gateway, upstream,
        http: aiohttp.ClientSession) -> None:
    """Pooled connections the restarted server closed are noticed and replaced by a retry on
    a fresh connection; the first /readyz after the restart is ready."""
    service, client = await service_for(persistent_redis.url)
    account = await service.create_account("restart")
    secrets = [(await service.create_key(account_id=account.id))[1] for _ in range(40)]
    await client.aclose()
    route = {"name": "echo", "prefix": "/echo/", "upstream": str(upstream.make_url(""))}
    gateway = await start_gateway(make_config(
        persistent_redis.url, [route], keys={"cache_ttl": "0.05s"}))

    async def burst() -> list[int]:
        async def one(secret: str) -> int:
            async with http.get(gateway.url + "/echo/x", headers=api_key(secret)) as response:
                return response.status
        return list(await asyncio.gather(*(one(s) for s in secrets)))

    assert set(await burst()) == {200}  # the pool now holds several connections
    persistent_redis.stop()
    persistent_redis.start()
    await asyncio.sleep(0.1)  # past the cache's freshness: every lookup goes to the store
    async with http.get(gateway.admin_url + "/readyz") as response:
        assert response.status == 200, await response.text()
    for _ in range(3):
        statuses = await burst()
        assert set(statuses) == {200}, statuses


async def test_idle_connections_are_closed_and_reopened_on_use(
        redis_clean: RedisServer) -> None:
    redis = connect(redis_clean.url, 1.0, pool_size=32)
    try:
        await asyncio.gather(*(redis.get(f"gw:test:{i}") for i in range(32)))
        busy = connection_count(redis)
        assert busy > 4
        # The first pass keeps what the burst needed; a pass with nothing busy since closes
        # all but one.
        await close_idle(redis)
        assert await close_idle(redis) == busy - 1
        assert connection_count(redis) == 1
        assert await redis.get(b"gw:test:0") is None  # and it works on
    finally:
        await redis.aclose()


async def test_every_connection_is_named_after_its_gateway_process(
        redis_clean: RedisServer, start_gateway) -> None:
    await start_gateway(make_config(redis_clean.url, []))
    service, client = await service_for(redis_clean.url)
    _, _, _ = await new_key(service)  # some store traffic
    await client.aclose()
    names = {c["name"] for c in _clients(redis_clean) if c["name"]}
    ours = {n for n in names if n.startswith("gateway:") and f":{os.getpid()}:" in n}
    assert ours, names
    # Every connection of this gateway process is named (the test's own clients are not).
    assert all(n.startswith("gateway:") for n in ours)


def test_sync_client_sanity(redis_clean: RedisServer) -> None:
    # The inspecting client of these tests is redis-py's plain client.
    assert isinstance(redis_clean.client(), sync_redis.Redis)
