"""The proxy end to end (SPEC §5, §6): real gateway, real upstream servers, real sockets."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import make_config, raw_request
from tests.support.redis_server import free_port


def route(name: str, prefix: str, upstream: str, **extra: Any) -> dict[str, Any]:
    # Public: these tests are about forwarding; authentication has tests of its own.
    return {"name": name, "prefix": prefix, "upstream": upstream, "public": True, **extra}


@asynccontextmanager
async def raw_upstream(
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A misbehaving upstream speaking raw bytes; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def upstream_url(server: Any, path: str = "") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def echo_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.status == 200, await response.text()
    data: dict[str, Any] = orjson.loads(await response.read())
    data["headers"] = CIMultiDict(data["headers"])  # header names are case-insensitive
    return data


class Recorder:
    """An upstream app that records what reached it and answers as each test says."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.answer: Any = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        await request.read()
        if self.answer is not None:
            result: web.StreamResponse = await self.answer(request)
            return result
        return web.Response(text="ok")


@pytest.fixture
async def gateway_to_echo(redis_server, upstream, start_gateway):  # type: ignore[no-untyped-def]
    config = make_config(redis_server.url, [
        route("root", "/", upstream_url(upstream, "/root")),
        route("vision", "/vision/", upstream_url(upstream), strip_prefix=True),
        route("batch", "/vision/batch/", upstream_url(upstream, "/batch-api"),
              strip_prefix=True),
        route("functions", "/functions", upstream_url(upstream)),
    ])
    return await start_gateway(config)


async def test_get_reaches_upstream_with_forwarding_headers(gateway_to_echo, http) -> None:
    async with http.get(gateway_to_echo.url + "/vision/any/path?x=1&y=%20z",
                        headers={"Host": "api.example.test"}) as response:
        echo = await echo_of(response)
        returned_id = response.headers["X-Request-Id"]
    assert echo["path"] == "/any/path"
    assert echo["query"] == "x=1&y=%20z"
    headers = echo["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "api.example.test"
    assert headers["X-Request-Id"] == returned_id
    assert len(returned_id) == 32


async def test_upstream_gets_its_own_host_not_the_clients(gateway_to_echo, upstream,
                                                          http) -> None:
    async with http.get(gateway_to_echo.url + "/vision/x",
                        headers={"Host": "api.example.test"}) as response:
        echo = await echo_of(response)
    assert echo["headers"]["Host"] == f"127.0.0.1:{upstream.port}"


@pytest.mark.parametrize(("client_id", "kept"), [
    ("req-123_abc.DEF:9", True),
    ("a" * 128, True),
    ("a" * 129, False),
    ("has space", False),
    ("<script>", False),
])
async def test_client_request_id_kept_only_when_sane(gateway_to_echo, http, client_id,
                                                      kept) -> None:
    async with http.get(gateway_to_echo.url + "/vision/x",
                        headers={"X-Request-Id": client_id}) as response:
        echo = await echo_of(response)
        returned = response.headers["X-Request-Id"]
    assert echo["headers"]["X-Request-Id"] == returned
    assert (returned == client_id) is kept


@pytest.mark.parametrize(("path", "service_path"), [
    ("/vision/a", "/a"),                       # strip_prefix
    ("/vision", "/"),                          # the prefix itself
    ("/vision/batch/run", "/batch-api/run"),   # longest prefix wins, base path joined
    ("/visions/x", "/root/visions/x"),         # segment boundary: not /vision/
    ("/functions/f1", "/functions/f1"),        # no strip_prefix
    ("/other", "/root/other"),                 # root route catches the rest
    ("/vision/a/../b", "/b"),                  # '..' inside the prefix is fine
    ("/vision//a///b", "/a/b"),                # slashes merged
    ("/vision/%7Euser/%c3%a9", "/~user/%C3%A9"),  # unreserved decoded, others normalised
])
async def test_routing(gateway_to_echo, http, path, service_path) -> None:
    async with http.get(gateway_to_echo.url + path) as response:
        echo = await echo_of(response)
    assert echo["path"] == service_path


async def test_credentials_spoofed_identity_and_hop_by_hop_headers_are_stripped(
        gateway_to_echo) -> None:
    request = (
        b"GET /vision/x HTTP/1.1\r\n"
        b"Host: gw.test\r\n"
        b"Authorization: Api-Key gwk_secretsecretsecret\r\n"
        b"Signature: sig1=:abc=:\r\n"
        b"Signature-Input: sig1=();created=1\r\n"
        b"X-Auth-Account-Id: acc_spoofed\r\n"
        b"x-auth-scopes: everything\r\n"
        b"X-AUTH-Method: api-key\r\n"
        b"Connection: close, X-Hop-Secret\r\n"
        b"X-Hop-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Forwarded: for=6.6.6.6\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-Host: evil.test\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
        b"X-Custom: kept\r\n"
        b"\r\n"
    )
    raw = await raw_request(gateway_to_echo.running.proxy_port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    sent = {k.lower(): v for k, v in orjson.loads(body)["headers"].items()}
    for gone in ("authorization", "signature", "signature-input", "x-auth-account-id",
                 "x-auth-scopes", "x-auth-method", "x-hop-secret", "keep-alive", "te",
                 "proxy-authorization", "forwarded"):
        assert gone not in sent, gone
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-host"] == "gw.test"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert sent["x-custom"] == "kept"


async def test_trusted_proxy_forwarding_headers_are_extended(redis_server, upstream,
                                                             start_gateway, http) -> None:
    config = make_config(redis_server.url, [route("v", "/v/", upstream_url(upstream))],
                         listen={"host": "127.0.0.1", "port": 0,
                                 "trusted_proxies": ["127.0.0.0/8"]})
    gateway = await start_gateway(config)
    async with http.get(gateway.url + "/v/x", headers={
        "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "api.example.com",
    }) as response:
        echo = await echo_of(response)
    assert echo["headers"]["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert echo["headers"]["X-Forwarded-Proto"] == "https"
    assert echo["headers"]["X-Forwarded-Host"] == "api.example.com"


def _error(raw: bytes) -> tuple[int, dict[str, Any], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)["error"], head


@pytest.mark.parametrize("target", [
    b"/vision/../functions/x",       # '..' escaping the prefix it lands in
    b"/vision/%2e%2e/functions/x",   # the same, encoded
    b"/vision/a%2Fb",                # encoded slash
    b"/vision/a%2fb",
    b"/vision/a%5Cb",                # encoded backslash
    b"/vision/a\\b",                 # raw backslash
    b"/vision/a%00b",                # encoded NUL
    b"/vision/a%zzb",                # malformed encoding
    b"/../etc/passwd",               # above the root
    b"/vision/x?q=a#frag",           # fragment
])
async def test_ambiguous_paths_are_refused_before_the_upstream(redis_server, serve_app,
                                                               start_gateway, target) -> None:
    recorder = Recorder()
    server = await serve_app(recorder.app)
    config = make_config(redis_server.url, [
        route("vision", "/vision/", upstream_url(server)),
        route("functions", "/functions/", upstream_url(server)),
        route("root", "/", upstream_url(server)),
    ])
    gateway = await start_gateway(config)
    raw = await raw_request(gateway.running.proxy_port,
                            b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, error, head = _error(raw)
    assert status == 400
    assert error["code"] == "bad_request"
    assert error["request_id"]
    assert b"application/json" in head
    assert recorder.requests == []


async def test_unknown_path_is_404_no_route(redis_server, upstream, start_gateway,
                                            http) -> None:
    gateway = await start_gateway(make_config(
        redis_server.url, [route("vision", "/vision/", upstream_url(upstream))]))
    async with http.get(gateway.url + "/nowhere") as response:
        assert response.status == 404
        body = await response.json()
        assert body["error"]["code"] == "no_route"
        assert body["error"]["request_id"] == response.headers["X-Request-Id"]


async def test_refused_connection_is_502(redis_server, start_gateway, http) -> None:
    closed = free_port()
    gateway = await start_gateway(make_config(
        redis_server.url, [route("down", "/down/", f"http://127.0.0.1:{closed}")]))
    async with http.get(gateway.url + "/down/x") as response:
        assert response.status == 502
        body = await response.json()
    assert body["error"]["code"] == "upstream_unavailable"
    assert "down" in body["error"]["message"]


async def test_upstream_that_closes_without_answering_is_502(redis_server, start_gateway,
                                                             http) -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with raw_upstream(slam) as port:
        gateway = await start_gateway(make_config(
            redis_server.url, [route("bad", "/bad/", f"http://127.0.0.1:{port}")]))
        async with http.get(gateway.url + "/bad/x") as response:
            assert response.status == 502
            assert (await response.json())["error"]["code"] == "upstream_unavailable"


async def test_hanging_upstream_is_504_after_the_route_timeout(redis_server, serve_app,
                                                               start_gateway, http) -> None:
    released = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hang)
    server = await serve_app(app)
    gateway = await start_gateway(make_config(
        redis_server.url, [route("slow", "/slow/", upstream_url(server), timeout="0.3s")]))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(gateway.url + "/slow/x") as response:
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "upstream_timeout"
    released.set()
    # Not a performance assertion: the route's own timeout must be what ended the wait.
    assert loop.time() - started < 10


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_methods_and_bodies_pass_through(gateway_to_echo, http, method) -> None:
    body = b"payload-" + method.encode() * 100
    async with http.request(method, gateway_to_echo.url + "/vision/m", data=body) as response:
        echo = await echo_of(response)
    assert echo["method"] == method
    assert echo["body_bytes"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_chunked_upload_passes_through(gateway_to_echo, http) -> None:
    parts = [bytes([i]) * 10_000 for i in range(50)]

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with http.post(gateway_to_echo.url + "/vision/upload", data=chunks()) as response:
        echo = await echo_of(response)
    assert echo["headers"].get("Transfer-Encoding") == "chunked"
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_expect_100_continue_is_answered(gateway_to_echo) -> None:
    port = gateway_to_echo.running.proxy_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /vision/e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echo = orjson.loads(body)
    assert echo["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert "Expect" not in echo["headers"]


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
async def test_bodiless_responses_carry_no_body(redis_server, serve_app, start_gateway,
                                                method, status) -> None:
    async def answer(request: web.Request) -> web.Response:
        if status == 200:
            return web.Response(body=b"x" * 1000)  # HEAD: aiohttp keeps Content-Length
        return web.Response(status=status, headers={"ETag": '"v1"'})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = await serve_app(app)
    gateway = await start_gateway(make_config(
        redis_server.url, [route("r", "/r/", upstream_url(server))]))
    port = gateway.running.proxy_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} /r/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        everything = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = everything.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), everything
    assert body == b""
    if method == "HEAD":
        assert b"Content-Length: 1000" in head


async def test_content_encoding_passes_through_untouched(redis_server, serve_app,
                                                         start_gateway, http) -> None:
    original = b'{"hello": "world"}' * 200
    compressed = gzip.compress(original)
    seen: dict[str, str] = {}

    async def answer(request: web.Request) -> web.Response:
        seen["accept-encoding"] = request.headers.get("Accept-Encoding", "")
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip",
                                                      "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = await serve_app(app)
    gateway = await start_gateway(make_config(
        redis_server.url, [route("z", "/z/", upstream_url(server))]))
    async with http.get(gateway.url + "/z/x", headers={"Accept-Encoding": "gzip"}) as response:
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"
        assert await response.read() == compressed
    assert seen["accept-encoding"] == "gzip"


async def test_repeated_response_headers_and_status_are_kept(redis_server, serve_app,
                                                             start_gateway, http) -> None:
    async def answer(request: web.Request) -> web.Response:
        response = web.Response(status=418, reason="I'm a teapot", text="short and stout")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        response.headers["Connection"] = "X-Upstream-Hop"
        response.headers["X-Upstream-Hop"] = "secret"
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = await serve_app(app)
    gateway = await start_gateway(make_config(
        redis_server.url, [route("t", "/t/", upstream_url(server))]))
    async with http.get(gateway.url + "/t/x") as response:
        assert response.status == 418
        assert response.reason == "I'm a teapot"
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert "X-Upstream-Hop" not in response.headers
        assert await response.text() == "short and stout"


async def test_keep_alive_connections_to_upstream_are_reused(redis_server, serve_app,
                                                             start_gateway, http) -> None:
    peers: set[Any] = set()

    async def answer(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = await serve_app(app)
    gateway = await start_gateway(make_config(
        redis_server.url, [route("k", "/k/", upstream_url(server))]))
    for _ in range(20):
        async with http.get(gateway.url + "/k/x") as response:
            assert response.status == 200
    assert len(peers) == 1


async def test_a_small_answer_cut_short_by_the_upstream_is_a_clean_502(redis_server,
                                                                     start_gateway,
                                                                     http) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    async with raw_upstream(short) as port:
        gateway = await start_gateway(make_config(
            redis_server.url, [route("cut", "/cut/", f"http://127.0.0.1:{port}")]))
        async with http.get(gateway.url + "/cut/x") as response:
            assert response.status == 502
            assert (await response.json())["error"]["code"] == "upstream_unavailable"


async def test_pipelined_requests_are_answered_in_order(redis_server, serve_app,
                                                        start_gateway) -> None:
    recorder = Recorder()

    async def answer(request: web.Request) -> web.StreamResponse:
        # Later requests answer sooner: the order of answers must still be the clients'.
        index = int(request.path.rsplit("/", 1)[1])
        await asyncio.sleep(0.01 * (5 - index))
        return web.Response(text=f"answer-{index}")

    recorder.answer = answer
    server = await serve_app(recorder.app)
    gateway = await start_gateway(make_config(redis_server.url, [
        route("p", "/p/", upstream_url(server))]))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.running.proxy_port)
    writer.write(b"".join(f"GET /p/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(5)))
    await writer.drain()
    bodies = []
    for _ in range(5):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        bodies.append(await reader.readexactly(length))
    writer.close()
    assert bodies == [f"answer-{i}".encode() for i in range(5)]


async def test_a_client_that_pipelines_without_reading_is_not_served_without_bound(
        redis_server, serve_app, start_gateway) -> None:
    recorder = Recorder()
    big = b"x" * 60_000

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=big)

    recorder.answer = answer
    server = await serve_app(recorder.app)
    gateway = await start_gateway(make_config(redis_server.url, [
        route("p", "/p/", upstream_url(server))]))
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.running.proxy_port)
    writer.transport.set_write_buffer_limits(high=2**24)
    total = 3000  # 180 MB of answers, if the gateway went on writing them
    writer.write(b"GET /p/x HTTP/1.1\r\nHost: x\r\n\r\n" * total)
    seen = -1
    while seen != len(recorder.requests):  # until the gateway stops asking the upstream
        seen = len(recorder.requests)
        await asyncio.sleep(0.5)
    # The kernel's socket buffers hold some answers; past them the gateway waits.
    assert seen < total // 10, f"the gateway forwarded {seen} of {total} unread requests"
    writer.transport.abort()
