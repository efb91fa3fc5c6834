"""A minimal fast HTTP/1.1 upstream: answers every request `200 ok` once it has read the whole
body (Content-Length or chunked), keeping the connection alive.

Used as the upload sink (nginx's `return 200` answers before the body has arrived, so it cannot
measure an upload) and as the upstream when nginx is not installed.

    python -m bench.upstream --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
MAX_HEAD = 64 * 1024


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.state = "head"  # head | length | chunk-size | chunk-data | chunk-crlf | trailer
        self.remaining = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.state == "length" and not self.buffer:
            # the upload fast path: count the bytes, keep none
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return
            data = data[self.remaining:]
            self.remaining = 0
            self._done()
        self.buffer += data
        self._parse()

    def _done(self) -> None:
        assert self.transport is not None
        self.transport.write(CLOSE_RESPONSE if self.close_after else RESPONSE)
        if self.close_after:
            self.transport.close()
        self.state = "head"

    def _parse(self) -> None:
        buf = self.buffer
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD and self.transport is not None:
                        self.transport.close()
                    return
                head = bytes(buf[:end]).lower()
                del buf[:end + 4]
                self.close_after = b"\r\nconnection: close" in head
                length = 0
                chunked = b"\r\ntransfer-encoding: chunked" in head
                marker = head.find(b"\r\ncontent-length:")
                if marker >= 0:
                    line_end = head.find(b"\r\n", marker + 2)
                    value = head[marker + 17:line_end if line_end >= 0 else None]
                    length = int(value.strip())
                if chunked:
                    self.state = "chunk-size"
                elif length:
                    self.state, self.remaining = "length", length
                else:
                    self._done()
            elif self.state == "length":
                take = min(len(buf), self.remaining)
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self._done()
            elif self.state == "chunk-size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[:end + 2]
                self.state, self.remaining = ("chunk-data", size) if size else ("trailer", 0)
            elif self.state == "chunk-data":
                take = min(len(buf), self.remaining)
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self.state = "chunk-crlf"
            elif self.state == "chunk-crlf":
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = "chunk-size"
            else:  # trailer: lines until an empty one
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[:end + 2]
                if end == 0:
                    self._done()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, reuse_port=True, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
