"""The proxy listener: HTTP/1.1 on asyncio, parsed by httptools (llhttp), one Exchange per request.

Why not aiohttp's server here: on a proxy every layer of a general web server (request objects,
response preparation, header maps built and serialised again) costs more than the gateway's own
work, and its parser answers malformed requests with text of its own. This listener keeps only
what a proxy needs: strict parsing, limits, keep-alive, pipelining, backpressure both ways, and
every refusal answered in the gateway's JSON (SPEC §5).

The protocol object owns the socket; the handler owns one request at a time through an Exchange.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import ClientGone, ClientTooSlow, RequestRefused
from gateway.proxy.flow import WriteFlow
from gateway.proxy.headers import valid_host
from gateway.proxy.responses import error_reply, reason_phrase
from gateway.proxy.tls import ServerTls, verified_subject

log = logging.getLogger(__name__)

MAX_TARGET = 8190  # bytes in the request target; past it, 414
MAX_FIELD = 8190  # bytes in one header line; past it, 431
MAX_FIELDS = 100
MAX_HEAD = 2**16  # bytes in the whole request head
BODY_HIGH_WATER = 2**18  # unread request body bytes before the client's socket is paused
# Until the handler asks for a body (a signed request's nonce is claimed first, say), reads are
# this small and reading pauses past this much unread body: a request refused on its head costs
# the worker a few KiB however large the body its client sends (issue 17, item 2).
EARLY_READ = 2**14
READ_SIZE = 2**18  # bytes read at once otherwise
KEEPALIVE_TIMEOUT = 75.0  # an idle keep-alive connection is closed after this
HEAD_TIMEOUT = 30.0  # a request head must arrive whole within this (slow-loris bound)
BODY_TIMEOUT = 60.0  # a request body read waits at most this long for its next bytes
SEND_TIMEOUT = 60.0  # an answer waits at most this long for the client to read some of it
LINGER_BYTES = 2**20  # after answering early, unread request body discarded before closing...
LINGER_TIMEOUT = 2.0  # ...for at most this long, so the client gets to read the answer
SWEEP_INTERVAL = 1.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

Handler = Callable[["Exchange"], Awaitable[None]]


class _Refusal(Exception):
    """Raised inside parser callbacks; carries the answer."""

    def __init__(self, refused: RequestRefused) -> None:
        self.refused = refused


class Body:
    """A request body as it arrives, for one reader. The client's socket is paused while too
    much waits unread, so a large upload never sits in memory."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_continue",
        "_eof",
        "_error",
        "_high_water",
        "_size",
        "_waiter",
        "received",
        "wanted",
    )

    def __init__(self, conn: ProxyConnection, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._high_water = EARLY_READ  # BODY_HIGH_WATER once someone reads the body
        self.wanted = False  # someone has asked for the body
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue
        self.received = 0

    @property
    def complete(self) -> bool:
        return self._eof

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._size > self._high_water:
            self._conn.pause_for_body(True)
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._continue = False
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._eof:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def readany(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises ClientGone."""
        if not self.wanted:
            self.wanted = True
            self._high_water = BODY_HIGH_WATER
        while not self._chunks:
            if self._eof:
                return b""
            if self._error is not None:
                raise ClientGone(str(self._error)) from self._error
            if self._continue:
                # Asked for only now that someone reads the body: a refused request never
                # invites the client to send it.
                self._continue = False
                self._conn.write(CONTINUE)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, BODY_TIMEOUT)
            except TimeoutError:
                raise ClientTooSlow(f"no request body bytes for {BODY_TIMEOUT:g}s") from None
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= BODY_HIGH_WATER // 2:
            self._conn.pause_for_body(False)
        return chunk


class Exchange:
    """One request and the way to answer it. The request side reads like aiohttp's request
    (method, raw_path, headers, content...) so the auth code does not care which server runs."""

    __slots__ = (
        "_conn",
        "body_exists",
        "bytes_sent",
        "client_subject",
        "content",
        "content_length",
        "finished",
        "forwarding",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "remote",
        "scheme",
        "started",
        "status",
        "version",
    )

    def __init__(self, conn: ProxyConnection, method: str, raw_path: str,
                 headers: CIMultiDictProxy[str], version: str, keep_alive: bool,
                 content_length: int | None, body_exists: bool, expect_continue: bool) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.remote = conn.remote
        self.scheme = conn.scheme
        self.client_subject = conn.client_subject  # of a verified client certificate (mTLS)
        self.content_length = content_length
        self.body_exists = body_exists
        self.content = Body(conn, expect_continue and body_exists)
        if not body_exists:
            self.content.feed_eof()
        self.status = 0  # of the answer, once it has started
        self.bytes_sent = 0  # body bytes of the answer
        self.started = False
        self.finished = False
        self.forwarding = False  # a lost client then cancels the work (and the upstream call)

    # -- answering ---------------------------------------------------------------------------

    def _head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
              framing: bytes) -> bytes:
        if not self.content.complete:
            self.keep_alive = False  # the unread rest of the body would be read as a request
        if not self._conn.accepting:
            self.keep_alive = False
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        parts.extend([b"%s: %s\r\n" % pair for pair in headers])
        parts.append(framing)
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n\r\n")
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    def send_whole(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                   body: bytes, *, head_only: bool = False) -> None:
        """Head and body in one write. `head_only` (HEAD, 204, 304): the length is stated and
        no body follows."""
        if self.started:
            raise RuntimeError("answer already started")
        self.started = True
        self.finished = True
        self.status = status
        if head_only or status in (204, 304) or 100 <= status < 200:
            framing = b""  # HEAD's answer keeps the upstream's own Content-Length
        else:
            framing = b"Content-Length: %d\r\n" % len(body)
        head = self._head(status, reason, headers, framing)
        if head_only or not body:
            self._conn.write(head)
        else:
            self.bytes_sent = len(body)
            self._conn.write(head + body)

    def send_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  length: int | None) -> bool:
        """Start a streamed answer; the return says whether the body goes chunked."""
        if self.started:
            raise RuntimeError("answer already started")
        self.started = True
        self.status = status
        if length is not None:
            chunked = False
            framing = b"Content-Length: %d\r\n" % length
        elif self.version == "1.1":
            chunked = True
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            chunked = False  # HTTP/1.0: the end of the body is the end of the connection
            self.keep_alive = False
            framing = b""
        self._conn.write(self._head(status, reason, headers, framing))
        return chunked

    async def send_body(self, data: bytes, chunked: bool) -> None:
        if not data:
            return
        self.bytes_sent += len(data)
        self._conn.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        await self._conn.drain()

    @property
    def client_gone(self) -> bool:
        return self._conn.lost

    def end_body(self, chunked: bool) -> None:
        self.finished = True
        if chunked:
            self._conn.write(b"0\r\n\r\n")

    def send_error(self, refused: RequestRefused, request_id: str) -> None:
        status, headers, body = error_reply(refused, request_id)
        self.send_whole(status, reason_phrase(status), headers, body)

    def abort(self) -> None:
        """Cut the connection: a client must see a truncated answer, not a wrong whole one."""
        self.keep_alive = False
        self._conn.abort()


class ProxyConnection(asyncio.BufferedProtocol):
    """One client connection: parses requests, runs them one at a time, in order.

    It reads into its server's buffer (BufferedProtocol): the parser copies out what it keeps,
    and the size of each read can follow what the connection is doing."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.scheme = "http"
        self.client_subject: str | None = None
        self.accepting = True  # False once the server drains: answers then say close
        self.deadline: float | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = False
        self._last: Exchange | None = None  # the most recently parsed request
        self._lingering: int | None = None  # bytes still to discard before closing
        self._receiving: Exchange | None = None  # whose body the parser is reading
        self._pipeline: deque[Exchange] = deque()  # parsed, waiting their turn
        self._current: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending_error: RequestRefused | None = None
        self._closing = False
        self._lost = False
        self._paused_body = False
        self._paused_pipeline = False
        self._reading_paused = False
        self._flow = WriteFlow()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        tls = self.server.tls
        if tls is not None:  # called once the handshake is done
            self.scheme = "https"
            if tls.verify_clients:
                self.client_subject = verified_subject(transport.get_extra_info("ssl_object"))
        self.server.connections.add(self)
        self.deadline = self.server.now() + KEEPALIVE_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.server.forget(self)
        gone = ConnectionResetError("the client closed the connection")
        for exchange in (self._current, *self._pipeline):
            if exchange is not None:
                exchange.content.fail(gone)
        self._pipeline.clear()
        if self._current is not None and self._current.forwarding and self._task is not None:
            self._task.cancel()  # nobody is left to answer: stop the upstream work too
        self._flow.release(gone)

    def get_buffer(self, sizehint: int) -> memoryview:
        receiving = self._receiving
        if (receiving is not None and receiving.content.wanted) or self._lingering is not None:
            return self.server.read_view
        return self.server.early_view  # a head, or a body nobody has asked for yet

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self._lingering is not None:
            self._lingering -= len(data)
            if self._lingering <= 0:
                self._close()
            return
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refusal):
                self._protocol_error(cause.refused)
            else:
                log.error("request parsing failed", exc_info=cause or exc)
                self._protocol_error(RequestRefused("bad_request", "malformed HTTP request"))
        except httptools.HttpParserError as exc:
            # Bytes after a request that closes the connection are ignored, never parsed.
            if not self._closing:
                self._protocol_error(RequestRefused("bad_request",
                                                    f"malformed HTTP request: {exc}"))
        self._next()

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()
        self._next()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._raw_headers = []
        self._head_size = 0
        self._in_head = True
        if self._current is None:  # else the request running owns the connection's time
            self.deadline = self.server.now() + HEAD_TIMEOUT

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > MAX_TARGET:
            raise _Refusal(RequestRefused("uri_too_long",
                                          f"the request target is over {MAX_TARGET} bytes"))
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 2  # the line as sent: "name: value"
        self._head_size += size
        if size > MAX_FIELD or len(self._raw_headers) >= MAX_FIELDS \
                or self._head_size > MAX_HEAD:
            raise _Refusal(RequestRefused(
                "headers_too_large",
                f"request headers are limited to {MAX_FIELDS} fields of {MAX_FIELD} bytes "
                f"and {MAX_HEAD} bytes in all"))
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = CIMultiDict([(n.decode("latin-1"), v.decode("latin-1"))
                               for n, v in self._raw_headers])
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refusal(RequestRefused("bad_request", "only HTTP/1.0 and HTTP/1.1 are served"))
        hosts = headers.getall("Host", ())
        if len(hosts) > 1 or (not hosts and version == "1.1"):
            raise _Refusal(RequestRefused("bad_request",
                                          "an HTTP/1.1 request needs exactly one Host header"))
        if hosts and not valid_host(hosts[0]):
            # `Host: evil.example/..@x` would reach the upstream as X-Forwarded-Host.
            raise _Refusal(RequestRefused("bad_request", "the Host header is not a valid "
                                          "authority (a host name or address, and a port)"))
        length_text = headers.get("Content-Length")
        content_length = int(length_text) if length_text is not None else None
        chunked = "Transfer-Encoding" in headers  # llhttp accepts only a final `chunked`
        exchange = Exchange(
            self, parser.get_method().decode("ascii"), b"".join(self._url).decode("ascii"),
            CIMultiDictProxy(headers), version, parser.should_keep_alive(),
            content_length, chunked or bool(content_length),
            # RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored.
            version == "1.1" and headers.get("Expect", "").lower() == "100-continue")
        if self._current is None:
            self.deadline = None
        self._in_head = False
        self._last = exchange
        self._receiving = exchange
        self._pipeline.append(exchange)
        if self._current is not None or len(self._pipeline) > 1:
            self._paused_pipeline = True  # one request ahead is enough; the socket waits
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        if self._receiving is not None:
            self._receiving.content.feed(body)

    def on_message_complete(self) -> None:
        receiving = self._receiving
        if receiving is not None:
            receiving.content.feed_eof()
            self._receiving = None
            if not receiving.keep_alive:
                # RFC 9112 §9.6: nothing after a request that closes the connection is read.
                self._closing = True
                self._paused_pipeline = True
                self._update_reading()

    # -- running exchanges ---------------------------------------------------------------------

    def _next(self) -> None:
        # A client that pipelines requests but reads no answers gets no more of them: the
        # next request waits until the socket drains (resume_writing calls back here).
        if self._current is not None or not self._pipeline or self._lost or self._flow.paused:
            return
        exchange = self._current = self._pipeline.popleft()
        self._task = asyncio.get_running_loop().create_task(self._run(exchange))

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self.server.handler(exchange)
        except asyncio.CancelledError:
            pass  # the client went away (see connection_lost); the handler has accounted
        except Exception:
            log.exception("unhandled error answering %s %s", exchange.method,
                          exchange.raw_path.partition("?")[0])
            if not exchange.started and not self._lost:
                exchange.send_error(RequestRefused("internal_error", "internal error"), "-")
            exchange.keep_alive = False
        finally:
            self._done(exchange)

    def _done(self, exchange: Exchange) -> None:
        self._current = None
        self._task = None
        if self._lost:
            return
        if self._pending_error is not None:
            self._reply_and_close(self._pending_error)
            return
        if not exchange.finished or not exchange.keep_alive or not self.accepting \
                or self._closing:
            if exchange.finished and not exchange.content.complete:
                self._linger()  # the client is still sending: let it read the answer first
            else:
                self._close()
            return
        # A body left unread (an early answer) is dropped with its exchange: read on.
        self._paused_body = False
        if self._paused_pipeline and len(self._pipeline) <= 1:
            self._paused_pipeline = False
        self._update_reading()
        if self._pipeline:
            self._next()
        if self._current is None:
            # Waiting: for a head under way, or for the next request (or for the socket to
            # drain before a pipelined one is started).
            self.deadline = self.server.now() + (HEAD_TIMEOUT if self._in_head
                                                  else KEEPALIVE_TIMEOUT)

    def _protocol_error(self, refused: RequestRefused) -> None:
        """The parser refused the stream: nothing after this point is trusted as a request."""
        self._closing = True
        self._set_reading(False)
        receiving = self._receiving
        # Requests parsed but not started are dropped; only the one running may answer.
        self._pipeline.clear()
        if self._current is None:
            self._reply_and_close(refused)
        elif receiving is self._current:
            receiving.content.fail(ConnectionAbortedError(refused.message))
            receiving.keep_alive = False
        else:
            self._pending_error = refused

    def _upgraded(self) -> None:
        # Protocol upgrades are not proxied: the request is answered as a plain one (the
        # Upgrade header is hop-by-hop and never forwarded), then the connection closes.
        last = self._last
        if last is not None and last.body_exists:
            # llhttp does not read the body of an upgrade request: refuse rather than send
            # the upstream a length with no bytes.
            self._protocol_error(RequestRefused("bad_request",
                                                "an upgrade request may not carry a body"))
            return
        self._closing = True
        self._set_reading(False)
        if last is not None:
            last.keep_alive = False
            last.content.feed_eof()
        self._receiving = None

    def _reply_and_close(self, refused: RequestRefused) -> None:
        if self._lost:
            return
        status, headers, body = error_reply(refused, "-")
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))]
        head.extend(b"%s: %s\r\n" % pair for pair in headers)
        head.append(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        self.write(b"".join(head) + body)
        self._linger()

    # -- I/O helpers ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._lost:
            self.transport.write(data)

    @property
    def lost(self) -> bool:
        return self._lost

    async def drain(self) -> None:
        if self._lost:
            raise ConnectionResetError("the client closed the connection")
        try:
            await self._flow.wait(SEND_TIMEOUT)
        except TimeoutError:
            # A client that stops reading must not hold this connection (and an upstream
            # connection behind it) for ever.
            self.abort()
            raise ConnectionResetError(f"the client read nothing for {SEND_TIMEOUT:g}s") \
                from None

    def pause_for_body(self, paused: bool) -> None:
        if paused != self._paused_body:
            self._paused_body = paused
            self._update_reading()

    def _update_reading(self) -> None:
        self._set_reading(not (self._paused_body or self._paused_pipeline or self._closing))

    def _set_reading(self, reading: bool, *, force: bool = False) -> None:
        if self.transport is None or self._lost:
            return
        if reading != self._reading_paused and not force:
            return  # already so
        self._reading_paused = not reading
        if reading:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _linger(self) -> None:
        """Close without losing the answer: closing a socket with unread input makes the kernel
        send a reset, and the client may lose the answer already sent. So the write side is
        shut, and input is read and dropped (bounded in bytes and time) until the client
        closes too."""
        transport = self.transport
        if transport is None or self._lost or not transport.can_write_eof():
            self._close()
            return
        self._closing = True
        self._lingering = LINGER_BYTES
        transport.write_eof()
        self.deadline = self.server.now() + LINGER_TIMEOUT
        self._set_reading(True, force=True)  # whatever was recorded: the input must drain

    def _close(self) -> None:
        self._closing = True
        self.deadline = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def timed_out(self) -> None:
        """Called by the server's sweep once `deadline` has passed."""
        self.deadline = None
        if self._lingering is not None:
            self._close()
        elif self._in_head and self._current is None:
            self._reply_and_close(RequestRefused(
                "request_timeout", f"the request head did not arrive within {HEAD_TIMEOUT:g}s"))
        elif self._current is None:
            self._close()  # an idle keep-alive connection

    def stop_accepting(self) -> None:
        """Draining: idle connections close now, busy ones after their answer."""
        self.accepting = False
        if self._current is None and not self._pipeline:
            self._close()


class ProxyServer:
    """The listening socket, its connections, and a graceful stop."""

    def __init__(self, handler: Handler, tls: ServerTls | None = None) -> None:
        self.handler = handler
        self.tls = tls  # None: plain HTTP
        self.connections: set[ProxyConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._emptied: asyncio.Event | None = None  # set while draining, once none are left
        self._loop = asyncio.get_running_loop()
        # Every connection reads into this (reads never interleave on one loop); the parser
        # copies out the pieces it keeps.
        self.read_view = memoryview(bytearray(READ_SIZE))
        self.early_view = self.read_view[:EARLY_READ]

    def forget(self, conn: ProxyConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._emptied is not None:
            self._emptied.set()

    def now(self) -> float:
        return self._loop.time()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        self._server = await self._loop.create_server(
            lambda: ProxyConnection(self), host, port, reuse_port=reuse_port or None,
            backlog=2048, ssl=self.tls.front if self.tls is not None else None,
            ssl_handshake_timeout=HEAD_TIMEOUT if self.tls is not None else None)
        self._sweeper = self._loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        # One timer for all connections instead of one per request: the per-request cost of
        # a deadline is then one float assignment.
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.now()
            for conn in [c for c in self.connections if c.deadline is not None
                         and c.deadline <= now]:
                conn.timed_out()

    async def close(self, drain_timeout: float) -> None:
        """Stop accepting, let requests in flight finish within `drain_timeout`, then cut."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.stop_accepting()
        if self.connections:
            self._emptied = asyncio.Event()
            try:
                await asyncio.wait_for(self._emptied.wait(), drain_timeout)
            except TimeoutError:
                log.warning("%d connection(s) still busy after the drain timeout; cut",
                            len(self.connections))
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.sleep(0)  # let connection_lost callbacks run

