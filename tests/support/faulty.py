"""Misbehaving upstreams, a raw HTTP/1.1 client and /proc counters, for the fault tests
(tests/integration/test_faults.py).

`FaultyUpstream` is a raw-socket server: every connection it accepts runs one behaviour
coroutine, and the server keeps count of the connections open right now and records how each
one ended (the peer closed it, the peer reset it, or the behaviour ended it itself). Behaviours
that misbehave and then stay connected wait for the peer to close, so `open` counts exactly the
connections the gateway has not let go of.

`exchange()` sends raw bytes and reads one answer the way a strict client would, telling a
complete body from a cut one (short of its Content-Length, or chunked without the last chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson

READ_SIZE = 2**16


# -- the misbehaving upstream --------------------------------------------------------------------

@dataclass
class UpstreamConnection:
    """One connection the faulty upstream accepted, and what became of it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened_at: float = field(default_factory=time.monotonic)
    head: bytes = b""
    body_received: int = 0
    body_sent: int = 0
    # How it ended: "eof" (the peer closed it), "reset" (the peer reset it), "ours" (the
    # behaviour closed or reset it). None while open.
    ended: str | None = None
    ended_at: float | None = None
    head_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, how: str) -> None:
        if self.ended is None:
            self.ended = how
            self.ended_at = time.monotonic()

    async def read_head(self) -> bytes:
        self.head = await self.reader.readuntil(b"\r\n\r\n")
        self.head_seen.set()
        return self.head

    def content_length(self) -> int:
        for line in self.head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return int(value.strip())
        return 0

    async def read_body(self, length: int) -> bool:
        """Read up to `length` body bytes; False (and the connection marked ended) when the peer
        closed or reset it first."""
        while self.body_received < length:
            try:
                data = await self.reader.read(min(READ_SIZE, length - self.body_received))
            except ConnectionError:
                self.end("reset")
                return False
            if not data:
                self.end("eof")
                return False
            self.body_received += len(data)
        return True

    async def wait_for_peer_close(self) -> None:
        """Read (and drop) whatever comes until the peer closes or resets the connection."""
        while True:
            try:
                data = await self.reader.read(READ_SIZE)
            except ConnectionError:
                self.end("reset")
                return
            if not data:
                self.end("eof")
                return

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.body_sent += len(data)

    def reset(self) -> None:
        """End the connection with a TCP RST (SO_LINGER 0, then close), not a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.end("ours")


Behaviour = Callable[[UpstreamConnection], Awaitable[None]]


class FaultyUpstream:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections: list[UpstreamConnection] = []
        self.open = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultyUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = UpstreamConnection(reader, writer)
        self.connections.append(connection)
        self.open += 1
        try:
            await self.behaviour(connection)
        except (ConnectionError, asyncio.IncompleteReadError):
            connection.end("reset")
        finally:
            connection.end("ours")
            writer.close()
            self.open -= 1
            self._tasks.discard(task)

    async def first_connection(self, within: float = 10.0) -> UpstreamConnection:
        """The next connection whose request head has arrived."""
        deadline = time.monotonic() + within
        while True:
            for connection in self.connections:
                if connection.head_seen.is_set() and connection.ended is None:
                    return connection
            if time.monotonic() > deadline:
                raise AssertionError(f"no request reached the upstream within {within}s")
            await asyncio.sleep(0.01)


@asynccontextmanager
async def faulty_upstream(behaviour: Behaviour) -> AsyncIterator[FaultyUpstream]:
    server = await FaultyUpstream(behaviour).start()
    try:
        yield server
    finally:
        await server.close()


# Behaviours. Each reads the request head first, as a real server would.

async def hang(connection: UpstreamConnection) -> None:
    """Accept the request and never answer."""
    await connection.read_head()
    await connection.wait_for_peer_close()


def reset_mid_body(length: int, sent: int) -> Behaviour:
    """A head announcing `length` body bytes, `sent` of them, then a TCP reset."""

    async def behave(connection: UpstreamConnection) -> None:
        await connection.read_head()
        await connection.send(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                              f"Content-Length: {length}\r\n\r\n".encode())
        block = os.urandom(READ_SIZE)
        while connection.body_sent < sent:
            await connection.send(block[:min(len(block), sent - connection.body_sent)])
        await asyncio.sleep(0.05)  # let the bytes leave before the reset overtakes them
        connection.reset()

    return behave


def trickle(length: int, interval: float) -> Behaviour:
    """The head at once, then the body one byte every `interval` seconds."""

    async def behave(connection: UpstreamConnection) -> None:
        await connection.read_head()
        await connection.send(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode())
        closed = asyncio.ensure_future(connection.wait_for_peer_close())
        try:
            while connection.body_sent < length and not closed.done():
                await asyncio.sleep(interval)
                if closed.done():
                    break
                await connection.send(b"x")
            await closed
        finally:
            closed.cancel()

    return behave


def stream_slowly(length: int, block: int, interval: float) -> Behaviour:
    """A head announcing `length` bytes, then `block` bytes every `interval` seconds until done
    or until the peer goes away."""

    async def behave(connection: UpstreamConnection) -> None:
        await connection.read_head()
        closed = asyncio.ensure_future(connection.wait_for_peer_close())
        try:
            await connection.send(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n"
                                  .encode())
            data = b"y" * block
            while connection.body_sent < length and not closed.done():
                await connection.send(data[:length - connection.body_sent])
                await asyncio.sleep(interval)
            await closed
        except ConnectionError:
            connection.end("reset")
        finally:
            closed.cancel()

    return behave


async def drain_then_answer(connection: UpstreamConnection) -> None:
    """Read the whole request body (as announced by Content-Length), then answer 200."""
    await connection.read_head()
    if await connection.read_body(connection.content_length()):
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await connection.wait_for_peer_close()


# -- a strict raw client ---------------------------------------------------------------------------

@dataclass
class Answer:
    status: int | None = None  # None: no head at all
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, last value wins
    body: bytes = b""
    complete: bool = False  # the body as announced arrived whole
    closed: bool = False  # the server closed (or reset) the connection after, or instead
    timed_out: bool = False
    elapsed: float = 0.0

    @property
    def code(self) -> str | None:
        """The gateway's error code, when the body is its JSON error."""
        try:
            return str(orjson.loads(self.body)["error"]["code"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        if self.status is None:
            if self.timed_out:
                return f"no answer within {self.elapsed:.1f}s"
            return "connection closed without an answer"
        what = f"{self.status} {self.code or ''}".strip()
        if not self.complete:
            what += f" (body cut after {len(self.body)} bytes)"
        if self.timed_out:
            what += f" (stalled after {self.elapsed:.1f}s)"
        return what


async def read_answer(reader: asyncio.StreamReader, answer: Answer) -> None:
    """Fill `answer` from the stream: head, then a body delimited by Content-Length, chunked
    encoding or the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        answer.closed = True
        return
    lines = head.decode("latin-1").split("\r\n")
    answer.status = int(lines[0].split()[1])
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            answer.headers[name.strip().lower()] = value.strip()
    body = bytearray()
    try:
        if "content-length" in answer.headers:
            length = int(answer.headers["content-length"])
            while len(body) < length:
                data = await reader.read(min(READ_SIZE, length - len(body)))
                if not data:
                    answer.closed = True
                    break
                body += data
            answer.complete = len(body) == length
        elif answer.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    answer.complete = True
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            while data := await reader.read(READ_SIZE):
                body += data
            answer.closed = answer.complete = True
    except (asyncio.IncompleteReadError, ConnectionError):
        answer.closed = True
    finally:
        answer.body = bytes(body)


async def exchange(port: int, request: bytes, within: float) -> Answer:
    """Send `request` on a new connection to 127.0.0.1:`port`, read one answer, close. Gives up
    after `within` seconds (the answer then says timed_out)."""
    answer = Answer()
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        answer.closed = True
        answer.elapsed = time.monotonic() - started
        return answer
    try:
        writer.write(request)
        await writer.drain()
        await asyncio.wait_for(read_answer(reader, answer), within)
    except TimeoutError:
        answer.timed_out = True
    except ConnectionError:
        answer.closed = True
    finally:
        answer.elapsed = time.monotonic() - started
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer


def get_request(path: str, headers: dict[str, str] | None = None,
                keep_alive: bool = False) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: gateway.test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class KeepAliveClient:
    """One persistent connection, requests sent one after another on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.local_port = int(writer.get_extra_info("sockname")[1])

    @classmethod
    async def connect(cls, port: int) -> KeepAliveClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, path: str, headers: dict[str, str] | None = None,
                  within: float = 15.0) -> Answer:
        answer = Answer()
        started = time.monotonic()
        try:
            self.writer.write(get_request(path, headers, keep_alive=True))
            await self.writer.drain()
            await asyncio.wait_for(read_answer(self.reader, answer), within)
        except TimeoutError:
            answer.timed_out = True
        except ConnectionError:
            answer.closed = True
        answer.elapsed = time.monotonic() - started
        return answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# -- counting what a process holds -----------------------------------------------------------------

def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    return inodes


def server_side_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the accepted socket serving the IPv4 loopback connection from
    `client_port` to `server_port` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if (state == "01" and int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port):
            return inode
    return None


def connection_owner(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """Which of `pids` holds the server side of this connection (which worker accepted it)."""
    inode = server_side_inode(server_port, client_port)
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            if inode in socket_inodes(pid):
                return pid
    return None
