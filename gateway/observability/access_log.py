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
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed (e.g. a pipe whose reader went away): nothing to do
