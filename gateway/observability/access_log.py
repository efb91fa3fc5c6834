"""The access log (SPEC §9): one JSON line per request on stdout.

Lines are buffered and written at most every FLUSH_INTERVAL (or when the buffer fills), so a busy
worker makes a write per batch rather than one per request. Only the path is logged, never the
query (which may carry secrets of other systems), and nothing of the credential but the key id.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson

FLUSH_INTERVAL = 0.2
FLUSH_BYTES = 64 * 1024
# Workers share stdout; a pipe write is atomic only up to PIPE_BUF, so lines are written in
# whole-line pieces no larger than that, and never interleave mid-line.
ATOMIC_WRITE = 4096


class AccessLog:
    def __init__(self, stream: BinaryIO | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.enabled = enabled
        self._buffer = bytearray()
        self._scheduled: asyncio.TimerHandle | None = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record["time"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._buffer += orjson.dumps(record)
        self._buffer += b"\n"
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()
        elif self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            for piece in _line_pieces(data, ATOMIC_WRITE):
                self.stream.write(piece)
                self.stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed (e.g. a pipe whose reader went away): nothing to do


def _line_pieces(data: bytes, limit: int) -> list[bytes]:
    """Split newline-terminated `data` into runs of whole lines of at most `limit` bytes (a
    longer line stands alone)."""
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else data.index(b"\n", end) + 1
        pieces.append(data[start:end])
        start = end
    return pieces
