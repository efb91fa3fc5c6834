"""Forwarding to upstreams: one pooled keep-alive client session per process, bodies streamed
both ways with bounded memory, upstream failures translated into SPEC §5 codes here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import RouteConfig
from gateway.errors import RequestRefused
from gateway.proxy.headers import client_response_headers

log = logging.getLogger(__name__)

# Connection pool bounds: enough for a busy worker, bounded so a slow upstream cannot make one
# worker open unbounded sockets. Waiting for a free connection counts against connect_timeout.
POOL_LIMIT = 1024
POOL_LIMIT_PER_HOST = 512
POOL_KEEPALIVE = 30.0
READ_BUFFER = 2**16
SMALL_BODY = 2**16  # answers up to this size (with a Content-Length) are sent in one write
# Headers aiohttp's client would otherwise invent; the proxy sends only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    route: RouteConfig
    method: str
    url: URL
    headers: CIMultiDict[str]
    request_id: str
    timeout: aiohttp.ClientTimeout
    body: bytes | None = None  # already read (a signed body); else the body is streamed


class _ClientGone(Exception):
    """The client went away while we were reading its body."""


class UpstreamPool:
    """Owns the process's one ClientSession; started and closed with the server."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=POOL_LIMIT,
            limit_per_host=POOL_LIMIT_PER_HOST,
            keepalive_timeout=POOL_KEEPALIVE,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # Content-Encoding passes through untouched
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            read_bufsize=READ_BUFFER,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamPool used before start()")
        return self._session


async def _body_from(request: web.BaseRequest) -> AsyncIterator[bytes]:
    # Reading chunk by chunk keeps memory bounded: aiohttp pauses the client's socket when its
    # buffer fills, and the upstream write below waits for the upstream to drain.
    content = request.content
    while True:
        try:
            chunk = await content.readany()
        except (ConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as exc:
            raise _ClientGone() from exc
        if not chunk:
            return
        yield chunk


async def forward(pool: UpstreamPool, request: web.BaseRequest,
                  upstream: UpstreamRequest) -> web.StreamResponse:
    """Send the request upstream and stream the answer back; raise RequestRefused on failure."""
    route = upstream.route
    body: bytes | AsyncIterator[bytes] | None = upstream.body
    if body is None and request.body_exists:
        body = _body_from(request)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        upstream_response = await pool.session.request(
            upstream.method, upstream.url, headers=upstream.headers, data=body,
            allow_redirects=False, timeout=upstream.timeout, proxy=None,
        )
    except RequestRefused:
        raise
    except Exception as exc:
        raise _translate(exc, route) from exc

    async with upstream_response:
        response = web.StreamResponse(
            status=upstream_response.status,
            reason=upstream_response.reason,
            headers=client_response_headers(upstream_response.headers, upstream.request_id),
        )
        if request.method == "HEAD" or upstream_response.status in _NO_BODY_STATUSES:
            return await _send_whole(request, response, b"")
        length = upstream_response.content_length
        if length is not None and length <= SMALL_BODY:
            # Small and of known size: read it whole first. Nothing has gone to the client yet,
            # so an upstream failing mid-body still gets a clean 502, and head and body leave
            # in one write instead of a loop of them.
            try:
                data = await upstream_response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _translate(exc, route) from exc
            return await _send_whole(request, response, data)
        await response.prepare(request)
        try:
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are already out, so no error response is possible: cut the connection so
            # the client sees a truncated body rather than a complete-looking wrong one.
            log.warning("upstream %s failed mid-body: %r", route.name, exc)
            _abort(request)
            return response
        except ConnectionError:
            _abort(request)  # the client went away mid-download; the upstream is released
            return response
        await response.write_eof()
        return response


async def _send_whole(request: web.BaseRequest, response: web.StreamResponse,
                      data: bytes) -> web.StreamResponse:
    try:
        await response.prepare(request)
        await response.write_eof(data)
    except ConnectionError:
        _abort(request)  # the client went away before its answer; nothing more to do
    return response


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _translate(exc: BaseException, route: RouteConfig) -> RequestRefused:
    """Map an aiohttp client failure to a SPEC §5 refusal."""
    if isinstance(exc, _ClientGone) or isinstance(exc.__cause__, _ClientGone):
        # Nobody is left to read this answer; the code only reaches the logs.
        return RequestRefused("bad_request", "the client closed the connection mid-request")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return RequestRefused("upstream_timeout",
                              f"upstream {route.name!r} did not answer in time")
    return RequestRefused("upstream_unavailable", f"upstream {route.name!r} is unavailable")
