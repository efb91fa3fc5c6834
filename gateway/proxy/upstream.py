"""The upstream side: pooled keep-alive HTTP/1.1 connections, parsed by httptools (llhttp).

A general client (aiohttp's ClientSession) builds URL objects, header maps, timers and
response objects for every call; a proxy already holds the request as bytes and wants the
answer as bytes, so this pool does only that. Failures surface as three exceptions
(`UpstreamTimeout`, `UpstreamFailed`, `UpstreamStale`), translated to SPEC §5 by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import cast

import httptools

from gateway.proxy.flow import WriteFlow
from gateway.proxy.tls import TlsLoadError, UpstreamTls, upstream_context

log = logging.getLogger(__name__)

POOL_LIMIT_PER_ORIGIN = 512  # open connections per upstream origin and worker
POOL_KEEPALIVE = 30.0  # an idle pooled connection older than this is closed, not reused
BODY_HIGH_WATER = 2**18  # unread upstream body bytes before its socket is paused
SWEEP_INTERVAL = 10.0

Origin = tuple[str, int, UpstreamTls | None]  # host, port, TLS (None: plain HTTP)


class UpstreamError(Exception):
    """Base of the upstream failures."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamFailed(UpstreamError):
    pass


class UpstreamStale(UpstreamFailed):
    """A reused keep-alive connection died before any answer: safe to retry once."""


class UpstreamTlsFailed(UpstreamFailed):
    """The TLS handshake with an https:// upstream failed; `summary` says so in a few words
    for the client (the message, with the details, is for the log)."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


class UpstreamConnection(asyncio.Protocol):
    """One pooled connection; carries one request/response exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.head_done = False
        self.complete = False
        self.request_sent = False
        self._parser: httptools.HttpResponseParser | None = None
        self._head_request = False
        self._interim = False
        self._until_eof = False
        self._got_bytes = False
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._flow = WriteFlow()

    # -- one exchange ------------------------------------------------------------------------

    def begin(self, head_request: bool) -> None:
        # llhttp moves on to the next message by itself, so the parser is kept, except after
        # an answer to HEAD: that states a length it never sends, and llhttp, not knowing the
        # request, would still be waiting for it.
        if self._parser is None or self._head_request:
            self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self.status = 0
        self.reason = b""
        self.headers = []
        self.head_done = self.complete = self._interim = self._until_eof = False
        self._got_bytes = False
        self.request_sent = False
        self._chunks.clear()
        self._size = 0
        self._error = None

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise self._error or UpstreamFailed("upstream connection closed")
        await self._flow.wait()

    async def read_head(self, within: float) -> None:
        """Wait for the response head. The same `timeout` keeps running over a body read with
        `read_whole`, so a trickling upstream is bounded too."""
        self._arm(within)
        while not self.head_done:
            await self._wait()

    async def read_whole(self) -> bytes:
        while not self.complete:
            await self._wait()
        self.disarm()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._resume()
        return data

    async def read_chunk(self, within: float) -> bytes:
        """The next piece of a streamed body, b"" at its end; each wait is bounded."""
        self.disarm()
        while not self._chunks:
            if self.complete:
                return b""
            self._arm(within)
            await self._wait()
            self.disarm()
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= BODY_HIGH_WATER // 2:
            self._resume()
        return chunk

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    @property
    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and self.request_sent and not self.closed
                and self._error is None and not self._paused)

    def close(self) -> None:
        self.disarm()
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    # -- waiting -------------------------------------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _arm(self, timeout: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._timed_out)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeout("the upstream did not answer in time"))

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.disarm()
        if self._parser is not None and self.head_done and self._until_eof \
                and not self.complete and exc is None:
            self.complete = True  # a body delimited by the connection's end has ended
            self.keep_alive = False
            self._wake()
        elif not self.complete:
            error: UpstreamError = (UpstreamStale if self.reused and not self._got_bytes
                                    else UpstreamFailed)("the upstream closed the connection")
            self._fail(error)
        self._flow.release()  # the writer wakes and finds `closed`
        self.pool.forget(self)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._parser is None or self.complete:
            self.close()  # bytes nobody asked for: this connection can't be trusted again
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.keep_alive = False
            self._fail(UpstreamFailed(f"malformed answer from the upstream: {exc}"))
            self.close()

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head_done:
            # A second answer to one request: the upstream is out of step with us.
            raise UpstreamFailed("the upstream sent more than one answer")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 1xx interim answers are not passed on; the final one is
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.head_done = True
        if self._head_request or status in (204, 304):
            self.complete = True
        else:
            names = {name.lower() for name, _ in self.headers}
            self._until_eof = b"content-length" not in names and \
                b"transfer-encoding" not in names
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(body)
        self._size += len(body)
        if self._size > BODY_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self.headers = []
            self.reason = b""
            return
        self.complete = True
        self._wake()


class UpstreamPool:
    """Keep-alive connections per upstream origin, bounded; the most recently used first."""

    def __init__(self, limit_per_origin: int = POOL_LIMIT_PER_ORIGIN,
                 keepalive: float = POOL_KEEPALIVE) -> None:
        self.limit = limit_per_origin
        self.keepalive = keepalive
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._open: dict[Origin, set[UpstreamConnection]] = {}
        self._waiters: dict[Origin, deque[asyncio.Future[None]]] = {}
        self._connecting: dict[Origin, int] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self._tls: dict[UpstreamTls, ssl.SSLContext] = {}

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conns in self._open.values():
            for conn in list(conns):
                conn.close()
        await asyncio.sleep(0)

    def open_count(self) -> int:
        return sum(len(c) for c in self._open.values())

    def take_idle(self, origin: Origin) -> UpstreamConnection | None:
        """The most recently used idle connection still fit for use, without waiting."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def acquire(self, origin: Origin, connect_timeout: float) -> UpstreamConnection:
        conn = self.take_idle(origin)
        if conn is not None:
            return conn
        now = time.monotonic()
        deadline = now + connect_timeout
        opened = self._open.setdefault(origin, set())
        while len(opened) + self._connecting.get(origin, 0) >= self.limit:
            # Full: wait for a connection to come back or go away, within connect_timeout.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(origin, deque()).append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise UpstreamTimeout("no free connection to the upstream in time") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                waiters = self._waiters.get(origin)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
            idle = self._idle.get(origin)
            if idle:
                conn = idle.pop()
                if not conn.closed:
                    conn.reused = True
                    return conn
        host, port, tls = origin
        loop = asyncio.get_running_loop()
        self._connecting[origin] = self._connecting.get(origin, 0) + 1
        try:
            context = self._tls_context(tls) if tls is not None else None
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                # With a context, the host is sent as SNI and checked against the certificate.
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, origin), host, port, ssl=context)
        except TimeoutError:
            raise UpstreamTimeout("connecting to the upstream timed out") from None
        except TlsLoadError as exc:
            raise UpstreamTlsFailed(str(exc), "its TLS settings cannot be loaded") from exc
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamTlsFailed(f"the upstream's certificate did not verify: "
                                    f"{exc.verify_message or exc}",
                                    "its TLS certificate did not verify") from exc
        except ssl.SSLError as exc:
            raise UpstreamTlsFailed(f"TLS handshake with the upstream failed: "
                                    f"{exc.reason or exc}", "the TLS handshake failed") from exc
        except OSError as exc:
            raise UpstreamFailed(f"cannot connect to the upstream: {exc}") from exc
        finally:
            self._connecting[origin] -= 1
            if not self._connecting[origin]:
                self._wake_one(origin)  # a failed connect frees its place too
        if conn.closed:
            raise UpstreamFailed("the upstream closed the connection at once")
        opened.add(conn)
        return conn

    def _tls_context(self, settings: UpstreamTls) -> ssl.SSLContext:
        context = self._tls.get(settings)
        if context is None:
            context = self._tls[settings] = upstream_context(settings)
        return context

    def release(self, conn: UpstreamConnection) -> None:
        """Back to the pool when the exchange ended cleanly, else closed."""
        if self._closed or not conn.reusable:
            conn.close()
            return
        conn.disarm()
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._wake_one(conn.origin)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side): it no longer counts against the limit."""
        opened = self._open.get(conn.origin)
        if opened is not None and conn in opened:
            opened.discard(conn)
            idle = self._idle.get(conn.origin)
            if idle and conn in idle:
                idle.remove(conn)
            self._wake_one(conn.origin)

    def _wake_one(self, origin: Origin) -> None:
        waiters = self._waiters.get(origin)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _sweep(self) -> None:
        # Idle connections are closed before the upstream's own keep-alive timer would, so a
        # request rarely meets a connection the upstream is closing.
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for idle in self._idle.values():
                for conn in [c for c in idle if now - c.idle_since >= self.keepalive]:
                    idle.remove(conn)
                    conn.close()
