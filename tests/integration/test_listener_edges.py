"""Edge cases of the proxy listener and the upstream pool, each a defect found in review of the
httptools rewrite: a real gateway in this process, a scripted raw-socket upstream, raw client
sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.proxy import listener
from gateway.proxy.upstream import UpstreamPool
from tests.conftest import make_config

Script = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
BIG = 300_000


class ScriptedUpstream:
    """Answers each request by the last path segment's script; counts connections."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.heads: list[bytes] = []
        self.open = 0
        self.peak = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ", 2)[1].decode()
                script = self.scripts.get(path.rsplit("/", 1)[-1])
                if script is None:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif not await script(head, reader, writer):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def scripted(redis_clean: Any, start_gateway: Any
                   ) -> AsyncIterator[tuple[ScriptedUpstream, int]]:
    upstream = ScriptedUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    gateway = await start_gateway(make_config(redis_clean.url, [
        {"name": "pub", "prefix": "/pub", "upstream": url, "public": True, "timeout": "3s"},
        {"name": "priv", "prefix": "/priv", "upstream": url, "timeout": "3s"}]))
    yield upstream, gateway.running.proxy_port
    server.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    body = b"" if head.startswith(b"HTTP/1.1 204") or b"HEAD" in head else \
        await asyncio.wait_for(reader.readexactly(length), 10)
    return head, body


async def test_a_pooled_connection_is_reusable_after_a_large_answer_read_whole(scripted) -> None:
    upstream, port = scripted

    async def big(head: bytes, reader: Any, writer: Any) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (BIG, b"x" * BIG))
        return True

    upstream.scripts["big"] = big
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):  # was: 200, 200, then 504 on a pooled connection left paused
        writer.write(b"GET /pub/big HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert len(body) == BIG
    writer.close()


async def test_an_answer_to_head_has_one_content_length(scripted) -> None:
    upstream, port = scripted

    async def head_answer(head: bytes, reader: Any, writer: Any) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        return True

    upstream.scripts["h"] = head_answer
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /pub/h HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    assert lengths == [b"Content-Length: 1234"], head
    writer.write(b"GET /pub/after HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection goes on
    head, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
    writer.close()


async def test_a_refusal_sent_while_the_client_uploads_reaches_the_client(scripted) -> None:
    _, port = scripted
    received = []
    for _ in range(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /priv/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        try:
            for _ in range(30):  # keep sending, as a client unaware of the answer would
                writer.write(b"y" * 65536)
                await writer.drain()
        except ConnectionError:
            pass
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            received.append(head.split(b"\r\n", 1)[0])
        except (ConnectionError, asyncio.IncompleteReadError):
            received.append(b"reset")
        writer.close()
    # Was: the socket closed with the body unread, the kernel reset it, the 401 was lost.
    assert received == [b"HTTP/1.1 401 Unauthorized"] * 10


async def test_an_upgrade_request_with_a_body_is_refused(scripted) -> None:
    upstream, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /pub/up HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                 b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello")
    head, _ = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert not upstream.heads  # was: forwarded with a length and no body, then a 504
    writer.close()


async def test_a_close_delimited_answer_cut_by_a_reset_is_not_passed_as_whole(scripted) -> None:
    upstream, port = scripted

    async def cut(head: bytes, reader: Any, writer: Any) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 100_000)
        await writer.drain()
        # A reset, not the clean end that delimits such a body: linger 0 makes close send RST.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return False

    upstream.scripts["cut"] = cut
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /pub/cut HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            data += chunk
    except ConnectionResetError:
        pass  # the gateway cuts the connection: also a truncation
    assert data.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in data
    assert not data.endswith(b"0\r\n\r\n"), "a cut body must not end like a whole one"
    writer.close()


async def test_an_upstream_that_answers_twice_does_not_poison_the_pool(scripted) -> None:
    upstream, port = scripted

    async def twice(head: bytes, reader: Any, writer: Any) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                     b"HTTP/1.1 404 Gone\r\nContent-Length: 4\r\n\r\nlate")
        return True

    upstream.scripts["twice"] = twice
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /pub/twice HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _ = await read_answer(reader)
    assert b"404" not in head.split(b"\r\n", 1)[0] and b"Gone" not in head, head
    for _ in range(3):  # later requests get their own answers, on fresh connections
        writer.write(b"GET /pub/plain HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok", (head, body)
    writer.close()


async def test_a_pipelined_head_does_not_time_out_into_the_running_answer(
        scripted, monkeypatch) -> None:
    upstream, port = scripted
    monkeypatch.setattr(listener, "HEAD_TIMEOUT", 0.5)

    async def slow(head: bytes, reader: Any, writer: Any) -> bool:
        await asyncio.sleep(2.0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        return True

    upstream.scripts["slow"] = slow
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Request 1 takes 2 s; the start of request 2 follows at once and is never finished.
    writer.write(b"GET /pub/slow HTTP/1.1\r\nHost: x\r\n\r\nGET /pub/two HTTP/1.1\r\nHo")
    head, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 200") and body == b"slow", (head, body)
    # Only then does request 2's head time run out: its 408 follows, and the connection ends.
    head, _ = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 408"), head
    writer.close()


async def test_the_pool_limit_holds_while_connections_are_being_opened(scripted) -> None:
    upstream, _ = scripted
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    origin = ("127.0.0.1", server.sockets[0].getsockname()[1], None)
    pool = UpstreamPool(limit_per_origin=4)
    await pool.start()
    try:
        async def one() -> None:
            conn = await pool.acquire(origin, 5.0)
            conn.begin(head_request=False)
            conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.request_sent = True
            await conn.read_head(5.0)
            await conn.read_whole()
            pool.release(conn)

        await asyncio.gather(*(one() for _ in range(40)))
        assert upstream.peak <= 4, f"{upstream.peak} connections at once (limit 4)"
    finally:
        await pool.close()
        server.close()
