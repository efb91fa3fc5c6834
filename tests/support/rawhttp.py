"""Raw HTTP/1.1 over a plain socket, for tests that send what no client library would.

`exchange()` connects, sends the bytes exactly as given, reads one response (status line,
headers, a body framed by Content-Length or chunked encoding, or up to the close), then waits a
bounded time to see whether the server closes the connection, keeping anything else it sends
(a second answer would mean it read a second request out of the bytes it was sent).

The reader is written here, not borrowed from a client library, so that it takes no liberties:
it reports what came back and whether the connection ended, and nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_HEAD = 1 << 20


@dataclass
class RawResponse:
    status: int | None  # None: no status line came back
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    closed: bool = False  # the server closed the connection after its answer (within the wait)
    reset: bool = False  # the connection was reset (RST) rather than closed
    timed_out: bool = False  # no complete answer within the timeout
    trailing: bytes = b""  # bytes the server sent after its first answer
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error(self) -> dict[str, Any] | None:
        """The gateway's `{"error": {...}}` object, None when the body is not one."""
        try:
            data = self.json()
        except orjson.JSONDecodeError:
            return None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return data["error"]
        return None

    @property
    def connection_close(self) -> bool:
        return any(token.strip().lower() == "close"
                   for value in self.all("Connection") for token in value.split(","))

    def summary(self) -> str:
        """One line for a failure message: what the server actually did."""
        if self.status is None:
            how = "reset" if self.reset else "timed out" if self.timed_out else "closed"
            return f"no answer ({how})"
        parts = [str(self.status)]
        error = self.error
        if error is not None:
            parts.append(str(error.get("code")))
        else:
            kind = (self.header("Content-Type") or "no content-type").split(";")[0]
            parts.append(f"{kind} {self.body[:60]!r}")
        parts.append("Connection: close" if self.connection_close else "no Connection: close")
        parts.append("closed" if self.closed else "reset" if self.reset else "left open")
        if self.trailing:
            parts.append(f"then sent {self.trailing[:80]!r}")
        return ", ".join(parts)


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()
        self.eof = False

    def fill(self) -> bool:
        """Read more; False at EOF. TimeoutError past the deadline."""
        if self.eof:
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as exc:  # ECONNRESET and friends
            raise ConnectionResetError(str(exc)) from exc
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def until(self, separator: bytes, limit: int) -> bytes | None:
        while (at := self.buffer.find(separator)) < 0:
            if len(self.buffer) > limit or not self.fill():
                return None
        return self.take(at + len(separator))

    def exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self.fill():
                return None
        return self.take(size)

    def rest(self) -> bytes:
        while self.fill():
            pass
        return self.take(len(self.buffer))

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def _parse_head(head: bytes, response: RawResponse) -> None:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    response.status = int(code)
    response.reason = reason.decode("latin-1")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        response.headers.append((name.decode("latin-1").strip(),
                                 value.decode("latin-1").strip()))


def _read_chunked(reader: _Reader) -> bytes | None:
    body = bytearray()
    while True:
        size_line = reader.until(b"\r\n", 1024)
        if size_line is None:
            return None
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while reader.until(b"\r\n", MAX_HEAD) not in (None, b"\r\n"):
                pass
            return bytes(body)
        chunk = reader.exactly(size + 2)
        if chunk is None:
            return None
        body += chunk[:-2]


def _read_body(reader: _Reader, response: RawResponse, method: bytes) -> bytes | None:
    assert response.status is not None
    if method == b"HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
        return b""
    if any("chunked" in v.lower() for v in response.all("Transfer-Encoding")):
        return _read_chunked(reader)
    length = response.header("Content-Length")
    if length is not None:
        return reader.exactly(int(length))
    return reader.rest()


def exchange(port: int, data: bytes, *, host: str = "127.0.0.1", timeout: float = 10.0,
             close_wait: float = 2.0) -> RawResponse:
    """Send `data` as it is and read one answer, then up to `close_wait` seconds for the close.

    A server that answers early (before it has read everything) may make the send fail; that is
    not an error here: what it answered is still read.
    """
    method = data.split(b" ", 1)[0]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        # Answered and closed before reading it all: what it said is still read below.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        reader = _Reader(sock, time.monotonic() + timeout)
        response = RawResponse(status=None)
        try:
            head = reader.until(b"\r\n\r\n", MAX_HEAD)
            if head is None:
                response.closed = reader.eof
                response.trailing = reader.take(len(reader.buffer))
                return response
            _parse_head(head, response)
            response.raw_head = head
            while response.status == 100:  # an interim answer: the real one follows
                head = reader.until(b"\r\n\r\n", MAX_HEAD)
                if head is None:
                    return response
                response.headers.clear()
                _parse_head(head, response)
                response.raw_head = head
            body = _read_body(reader, response, method)
            if body is None:
                response.body = reader.take(len(reader.buffer))
                response.closed = reader.eof
                return response
            response.body = body
        except TimeoutError:
            response.timed_out = True
            return response
        except ConnectionResetError:
            response.reset = True
            return response
        # The answer is complete; does the server end the connection now?
        reader.deadline = time.monotonic() + close_wait
        try:
            response.trailing = reader.rest()
            response.closed = True
        except TimeoutError:
            response.trailing = reader.take(len(reader.buffer))
        except ConnectionResetError:
            response.trailing = reader.take(len(reader.buffer))
            response.reset = True
        return response
