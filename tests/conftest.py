"""Shared fixtures: a real Redis, real upstream servers, the real gateway on ephemeral ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import BruteForceConfig, Config, build_config
from gateway.demo import create_demo_app
from gateway.keys.model import Account, KeyRecord
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.server import RunningGateway, serve
from gateway.store.client import connect
from tests.support.redis_server import RedisServer


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    # The gateway runs on uvloop in production, so the tests do too.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis for the session; tests that stop it use `own_redis` instead."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis, empty; emptied again after the test, so what the test wrote (an
    HMAC key makes a gateway without a master key refuse to start) never meets a later test
    that takes the shared server as it is."""
    redis_server.flush()
    yield redis_server
    redis_server.flush()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, free to be stopped and restarted."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own that keeps its data across stop() and start()."""
    server = RedisServer(persistent=True).start()
    yield server
    server.close()


async def service_for(url: str) -> tuple[KeyService, Any]:
    redis = connect(url, 2.0)
    return KeyService(KeyStore(redis)), redis


@pytest.fixture
async def key_service(redis_clean: RedisServer) -> AsyncIterator[KeyService]:
    """The lifecycle service on the session Redis (emptied for this test)."""
    service, redis = await service_for(redis_clean.url)
    yield service
    await redis.aclose()


async def new_key(service: KeyService, scopes: tuple[str, ...] = (), *,
                  account: Account | None = None,
                  **options: Any) -> tuple[KeyRecord, str, Account]:
    """An account holding api_access (unless given) and an API key of it: (key, secret, acct)."""
    if account is None:
        account = await service.create_account("test-account")
    key, secret = await service.create_key(account_id=account.id, scopes=scopes, **options)
    return key, secret, account



async def admin_json(http: aiohttp.ClientSession, admin_url: str, token: str, method: str,
                     path: str, body: Any, expect: int) -> Any:
    """An admin API call with `token`; its JSON answer, once its status is `expect`."""
    async with http.request(method, admin_url + path, json=body,
                            headers={"Authorization": f"Bearer {token}"}) as response:
        data = await response.json()
        assert response.status == expect, data
        return data

def api_key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Api-Key {secret}"}


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    """The demo echo upstream on an ephemeral port."""
    server = TestServer(create_demo_app("echo"))
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    """Start any aiohttp app as a real upstream server."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


# Tests send many failing authentications from 127.0.0.1 to one gateway: brute-force
# protection is set out of their way unless a test sets `brute_force` itself.
TEST_BRUTE_FORCE = {"max_failures": 1_000_000}


def make_config(redis_url: str, routes: list[dict[str, Any]], **sections: Any) -> Config:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "redis": {"url": redis_url, "timeout": "0.5s"},
        "brute_force": TEST_BRUTE_FORCE,
        "routes": routes,
    }
    data.update(sections)
    return build_config(data, "<test>")


class GatewayUnderTest:
    def __init__(self, running: RunningGateway) -> None:
        self.running = running
        self.url = f"http://127.0.0.1:{running.proxy_port}"
        self.admin_url = f"http://127.0.0.1:{running.admin_port}"


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[Config], Awaitable[GatewayUnderTest]]]:
    """Run the real gateway in this event loop on ephemeral ports."""
    async with AsyncExitStack() as stack:

        async def start(config: Config, subscribed: bool = True) -> GatewayUnderTest:
            if config.brute_force == BruteForceConfig():
                # Built without a `brute_force` section (or with exactly the defaults): out of
                # the way, as in make_config. A test of throttling sets other values.
                config = replace(config, brute_force=BruteForceConfig(
                    max_failures=TEST_BRUTE_FORCE["max_failures"]))
            running = await stack.enter_async_context(serve(config))
            if subscribed:
                # Lookups that race the first subscription are not cached (the subscription
                # drops the cache), so tests about caching start once it is in place.
                await asyncio.wait_for(running.listener.subscribed.wait(), 5)
            return GatewayUnderTest(running)

        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def raw_request(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the server closes or answers fully."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(_read_response(reader), wait)
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head + body
