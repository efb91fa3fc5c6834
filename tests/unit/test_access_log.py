"""The access log's writing (pure parts and a real stream)."""

from __future__ import annotations

import io

import orjson
import pytest

from gateway.observability.access_log import AccessLog, _line_pieces


def lines(*sizes: int) -> bytes:
    return b"".join(b"x" * size + b"\n" for size in sizes)


@pytest.mark.parametrize(("sizes", "limit", "expected"), [
    ((), 4096, []),
    ((10,), 4096, [11]),
    ((10, 20, 30), 4096, [63]),                  # all fit in one write
    ((2000, 2000, 2000), 4096, [4002, 2001]),    # cut on a line boundary
    ((5000,), 4096, [5001]),                     # a long line stands alone, whole
    ((10, 5000, 10), 4096, [11, 5001, 11]),
    ((4095,), 4096, [4096]),                     # exactly the limit
    ((4095, 1), 4096, [4096, 2]),
])
def test_pieces_are_whole_lines_within_the_limit(sizes, limit, expected) -> None:
    data = lines(*sizes)
    pieces = _line_pieces(data, limit)
    assert [len(p) for p in pieces] == expected
    assert b"".join(pieces) == data
    assert all(p.endswith(b"\n") for p in pieces)


async def test_records_are_json_lines_and_can_be_turned_off() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, enabled=True)
    log.write({"status": 200, "path": "/a"})
    log.write({"status": 401, "path": "/b"})
    log.flush()
    records = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["status"], r["path"]) for r in records] == [(200, "/a"), (401, "/b")]
    assert all(r["time"].endswith("+00:00") for r in records)

    log.enabled = False
    log.write({"status": 500})
    log.flush()
    assert len(stream.getvalue().splitlines()) == 2
