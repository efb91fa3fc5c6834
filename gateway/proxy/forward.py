"""Forwarding one request: serialise it for the upstream, stream bodies both ways with bounded
memory, and translate upstream failures into SPEC §5 codes, here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway.config import RouteConfig
from gateway.errors import ClientGone, ClientTooSlow, RequestRefused
from gateway.proxy.headers import client_response_pairs
from gateway.proxy.listener import Exchange
from gateway.proxy.upstream import (
    Origin,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamStale,
    UpstreamTimeout,
    UpstreamTlsFailed,
)

log = logging.getLogger(__name__)

SMALL_BODY = 2**16  # answers up to this size are read whole, then sent in one write
# Safe to send again when a reused keep-alive connection died before answering (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a call per field, per request
class UpstreamRequest:
    route: RouteConfig
    origin: Origin
    host: str  # the Host header the upstream gets
    method: str
    target: str  # path and query, already encoded
    fields: str  # the header lines but Host and framing (headers.upstream_request_fields)
    request_id: str
    body: bytes | None = None  # already read (a signed body); else the body is streamed
    # Added to the client's answer: the RateLimit fields of the key's limits (gateway/limits).
    response_headers: tuple[tuple[str, str], ...] = ()


def request_head(upstream: UpstreamRequest, framing: str) -> bytes:
    return (f"{upstream.method} {upstream.target} HTTP/1.1\r\nHost: {upstream.host}\r\n"
            f"{upstream.fields}{framing}\r\n").encode("latin-1")


async def forward(pool: UpstreamPool, exchange: Exchange, upstream: UpstreamRequest) -> None:
    """Send the request upstream and its answer back; raise RequestRefused when no answer has
    started yet, else cut the client's connection."""
    route = upstream.route
    streamed = upstream.body is None and exchange.body_exists
    if upstream.body is not None:
        framing = f"Content-Length: {len(upstream.body)}\r\n"
        payload = request_head(upstream, framing) + upstream.body
    elif streamed:
        framing = (f"Content-Length: {exchange.content_length}\r\n"
                   if exchange.content_length is not None else "Transfer-Encoding: chunked\r\n")
        payload = request_head(upstream, framing)
    else:
        payload = request_head(
            upstream, "Content-Length: 0\r\n" if exchange.content_length == 0 else "")

    for attempt in (1, 2):
        # An idle pooled connection is taken without a coroutine; else wait for one.
        conn = pool.take_idle(upstream.origin) or await _acquire(pool, upstream)
        conn.begin(head_request=upstream.method == "HEAD")
        sender: asyncio.Task[None] | None = None
        try:
            conn.send(payload)
            if streamed:
                sender = asyncio.get_running_loop().create_task(
                    _send_body(conn, exchange, chunked=exchange.content_length is None))
            else:
                conn.request_sent = True
            try:
                await conn.read_head(route.timeout)
            except UpstreamStale:
                if attempt == 1 and not streamed and upstream.method in IDEMPOTENT:
                    continue  # the pool's connection had gone stale: once more, fresh
                raise
            await _answer(conn, exchange, upstream)
            return
        except UpstreamError as exc:
            if sender is not None and sender.done() and not sender.cancelled():
                gone = sender.exception()
                if isinstance(gone, ClientTooSlow):
                    raise RequestRefused("request_timeout", str(gone)) from None
                if isinstance(gone, ClientGone):
                    raise RequestRefused("bad_request",
                                         "the request body was cut off or malformed") from None
            raise _translate(exc, route) from None
        finally:
            if sender is not None:
                if not sender.done():
                    sender.cancel()
                elif not sender.cancelled():
                    sender.exception()  # retrieved, so asyncio does not report it as lost
            pool.release(conn)


async def _acquire(pool: UpstreamPool, upstream: UpstreamRequest) -> UpstreamConnection:
    try:
        return await pool.acquire(upstream.origin, upstream.route.connect_timeout)
    except UpstreamError as exc:
        raise _translate(exc, upstream.route) from None


async def _send_body(conn: UpstreamConnection, exchange: Exchange, chunked: bool) -> None:
    # Bounded both ways: the client's socket pauses while the body waits unread, and this
    # loop waits for the upstream to drain before reading more.
    content = exchange.content
    try:
        while chunk := await content.readany():
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.send(b"0\r\n\r\n")
        conn.request_sent = True
    except ClientGone:
        conn.close()  # the upstream must not take a cut body for a whole one
        raise
    except UpstreamError:
        pass  # the reader side reports it


async def _answer(conn: UpstreamConnection, exchange: Exchange,
                  upstream: UpstreamRequest) -> None:
    status, reason = conn.status, conn.reason or b"-"
    head_only = upstream.method == "HEAD" or status in (204, 304)
    headers = client_response_pairs(conn.headers, upstream.request_id, keep_length=head_only)
    if upstream.response_headers:
        headers += [(name.encode("ascii"), value.encode("ascii"))
                    for name, value in upstream.response_headers]
    if head_only:
        exchange.send_whole(status, reason, headers, b"", head_only=True)
        return
    length = _content_length(conn.headers)
    if conn.complete or (length is not None and length <= SMALL_BODY):
        # Small, or already all here: read it whole first. Nothing has gone to the client yet,
        # so an upstream failing mid-body still gets a clean 502 (or 504: the head's timeout
        # bounds this read too), and head and body leave in one write.
        exchange.send_whole(status, reason, headers, await conn.read_whole())
        return
    chunked = exchange.send_head(status, reason, headers, length)
    try:
        while chunk := await conn.read_chunk(upstream.route.timeout):
            await exchange.send_body(chunk, chunked)
    except UpstreamError as exc:
        # The head is out, so no error answer is possible: cut the connection so the client
        # sees a truncated body rather than a complete-looking wrong one.
        log.warning("upstream %s failed mid-body: %s", upstream.route.name, exc)
        exchange.abort()
        return
    except ConnectionError:
        conn.close()  # the client went away mid-download: stop the upstream's transfer
        return
    exchange.end_body(chunked)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            return int(value)  # llhttp has already checked it is one plain number
    return None


def _translate(exc: UpstreamError, route: RouteConfig) -> RequestRefused:
    if isinstance(exc, UpstreamTimeout):
        return RequestRefused("upstream_timeout",
                              f"upstream {route.name!r} did not answer in time")
    if isinstance(exc, UpstreamTlsFailed):
        # The reason (which CA, which name) is the operator's, in the log; the client learns
        # only that the gateway would not trust the upstream.
        log.warning("upstream %s: %s", route.name, exc)
        return RequestRefused("upstream_unavailable",
                              f"upstream {route.name!r} is unavailable: {exc.summary}")
    return RequestRefused("upstream_unavailable", f"upstream {route.name!r} is unavailable")
