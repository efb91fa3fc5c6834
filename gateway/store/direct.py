"""A Redis connection of its own for one hot path: the caller packs its commands, and each reply
is handed to the callback sent with it, from the socket's data callback.

Through redis-py a command costs a task for the write, a timeout context for the read and a
chain of coroutines to parse it: for the nonce claims of signed requests (a round trip every
millisecond or so per worker under load) that was more CPU than the claims themselves. Here a
command is one `transport.write` and its reply one call, parsed by hiredis.

The connection is opened from the client's own settings, as redis-py would open it: a unix socket
or TCP (for a Sentinel group, the master the sentinels name at each opening); TLS for
`rediss://`, with the SSL context redis-py builds from the URL's options; AUTH (username and
password, or the client's credential provider); SELECT; CLIENT SETNAME. It speaks RESP2.
It is not part of the client's pool: its owner closes it.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import (
    AbstractConnection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection

from gateway.errors import StoreError, StoreUnavailable
from gateway.store.client import GatedRedis, store_errors

# A reply as hiredis reads it: bytes, int, None, a list of replies, or a hiredis.ReplyError.
Reply = Any
OnReply = Callable[[Reply], None]
# What a waiting command is told when the connection fails: a StoreError, never a Reply.
OnFailure = Callable[[StoreError], None]

DEFAULT_TIMEOUT = 5.0  # when the client has no socket timeout
# TCP keepalive when the client names none: first probe after 30 s idle, then every 5 s, given
# up after 3 (redis-py 8's own defaults). Each only where the platform has it.
KEEPALIVE = {getattr(socket, name): value for name, value in
             (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
             if hasattr(socket, name)}


def keepalive_options(settings: AbstractConnection) -> dict[int, int | bytes]:
    """The client's own keepalive options when it has them, else KEEPALIVE."""
    given = getattr(settings, "socket_keepalive_options", None)
    if getattr(settings, "socket_keepalive", False) and isinstance(given, dict) and given:
        return dict(given)
    return dict(KEEPALIVE)


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack(*args: bytes) -> bytes:
    """One command as RESP: `*<n>` then each argument as a bulk string."""
    return b"".join([b"*%d\r\n" % len(args), *[bulk(arg) for arg in args]])


def _closed() -> StoreUnavailable:
    return StoreUnavailable("key store unavailable: connection closed")


class _Protocol(asyncio.Protocol):
    """Replies in the order the commands went out; a command's timer fails the connection when
    its reply is late (a reply that came later would belong to no one)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[OnReply, OnFailure, asyncio.TimerHandle]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they are one all the same.)
        self.transport = cast(asyncio.Transport, transport)

    def send(self, packed: bytes, on_reply: OnReply, on_failure: OnFailure) -> None:
        if self.closed or self.transport is None:
            on_failure(_closed())
            return
        timer = asyncio.get_running_loop().call_later(self.timeout, self._timed_out)
        self.waiting.append((on_reply, on_failure, timer))
        self.transport.write(packed)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(StoreError(f"key store error: unreadable reply: {exc}"))
                return
            if reply is False:  # hiredis: no complete reply yet
                return
            if not self.waiting:
                self.fail(StoreError("key store error: a reply nobody asked for"))
                return
            on_reply, _, timer = self.waiting.popleft()
            timer.cancel()
            on_reply(reply)

    def _timed_out(self) -> None:
        self.fail(StoreUnavailable("key store unavailable: TimeoutError"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreUnavailable(f"key store unavailable: {exc.__class__.__name__}")
                  if exc else _closed())

    def fail(self, error: StoreError) -> None:
        """Close, and tell every command still waiting (each exactly once)."""
        if not self.closed and self.transport is not None:
            self.transport.abort()
        self.closed = True
        while self.waiting:
            _, on_failure, timer = self.waiting.popleft()
            timer.cancel()
            on_failure(error)


class DirectConnection:
    def __init__(self, redis: GatedRedis) -> None:
        # A connection object of the client's pool, never connected: it holds the settings
        # the client parsed from its URL (for a Sentinel group, all but the master's address).
        self._settings: AbstractConnection = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._timeout = self._settings.socket_timeout or DEFAULT_TIMEOUT
        self._protocol: _Protocol | None = None
        self._closes = 0  # an open() that a close() overtook must not install its connection

    @property
    def is_open(self) -> bool:
        return self._protocol is not None and not self._protocol.closed

    async def open(self) -> None:
        """Connect and introduce ourselves; StoreUnavailable when the store cannot be reached
        or refuses us."""
        self.close()
        closes = self._closes
        settings = self._settings
        with store_errors():  # refused, unreachable, TLS refused, or too slow: unavailable
            async with asyncio.timeout(settings.socket_connect_timeout or self._timeout):
                protocol = await self._connect()
        try:
            try:
                # Bounded like the connect: a credential provider that hangs must not hold
                # the claims waiting behind this opening forever.
                async with asyncio.timeout(self._timeout):
                    introduction = await self._introduction()
            except TimeoutError as exc:
                raise StoreUnavailable("key store unavailable: no credentials in time") from exc
            for command in introduction:
                reply = await self._call(protocol, command)
                if isinstance(reply, hiredis.ReplyError):
                    raise StoreUnavailable(f"key store refused the connection: {reply}")
            if self._closes != closes:
                raise StoreUnavailable("key store unavailable: closed while opening")
        except BaseException:
            protocol.fail(_closed())
            raise
        self._protocol = protocol

    async def _connect(self) -> _Protocol:
        settings = self._settings
        loop = asyncio.get_running_loop()

        def protocol() -> _Protocol:
            return _Protocol(self._timeout)

        if isinstance(settings, UnixDomainSocketConnection):
            _, made = await loop.create_unix_connection(protocol, settings.path)
            return made
        if isinstance(settings, SentinelManagedConnection):
            # Asked of the sentinels at every opening: after a failover the guard reopens
            # (see ReplayGuard's READONLY rule) and lands on the new master.
            host, port = await settings.connection_pool.get_master_address()
        else:
            host, port = settings.host, settings.port  # type: ignore[attr-defined]
        ssl = settings.ssl_context.get() if isinstance(settings, SSLConnection) else None
        transport, made = await loop.create_connection(protocol, host, port, ssl=ssl)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # The connection sits idle between bursts of signed requests: probed, it is
                # neither dropped by a NAT's idle timer nor found dead by a batch of claims.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in keepalive_options(settings).items():
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                transport.abort()
                raise
        return made

    async def _introduction(self) -> list[bytes]:
        """AUTH, SELECT and CLIENT SETNAME, as the URL and the client's options ask."""
        settings = self._settings
        commands = []
        credentials: tuple[str, ...] = ()
        provider = settings.credential_provider
        if provider is not None:
            # get_credentials_async is redis-py >= 5.3's; before, only the plain call.
            credentials = tuple(await provider.get_credentials_async()
                                if hasattr(provider, "get_credentials_async")
                                else provider.get_credentials())
        elif settings.password:
            credentials = (settings.username, settings.password) if settings.username \
                else (settings.password,)
        if credentials:
            commands.append(pack(b"AUTH", *(str(c).encode() for c in credentials)))
        if settings.db:
            commands.append(pack(b"SELECT", str(settings.db).encode()))
        if settings.client_name:
            commands.append(pack(b"CLIENT", b"SETNAME", settings.client_name.encode()))
        return commands

    @staticmethod
    async def _call(protocol: _Protocol, command: bytes) -> Reply:
        answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def on_reply(reply: Reply) -> None:
            if not answer.done():  # not when the caller gave up waiting
                answer.set_result(reply)

        def on_failure(error: StoreError) -> None:
            if not answer.done():
                answer.set_exception(error)

        protocol.send(command, on_reply, on_failure)
        return await answer

    def send(self, packed: bytes, on_reply: OnReply, on_failure: OnFailure) -> None:
        """Write one packed command; exactly one of the two callbacks is called, later (never
        from inside this call, unless the connection is not open)."""
        if self._protocol is None:
            on_failure(_closed())
            return
        self._protocol.send(packed, on_reply, on_failure)

    def close(self) -> None:
        self._closes += 1
        if self._protocol is not None:
            self._protocol.fail(_closed())
            self._protocol = None
