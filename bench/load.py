"""Load generators: wrk (parsed from the JSON line bench/wrk/report.lua prints) and a raw-socket
streamed upload."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

WRK_DIR = Path(__file__).parent / "wrk"
MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # non-2xx/3xx answers
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, script: str, args: list[str], *, duration: float, threads: int,
        connections: int) -> WrkResult:
    env = dict(os.environ, BENCH_WRK_DIR=str(WRK_DIR), BENCH_WRK_THREADS=str(threads))
    seconds = max(1, round(duration))  # wrk takes whole seconds
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
               "--timeout", "5s", "-s", str(WRK_DIR / script), url, "--", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=duration + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            data: dict[str, Any] = orjson.loads(line[len(MARKER):])
            errors = data["errors"]
            return WrkResult(
                requests=data["requests"], seconds=data["duration_us"] / 1e6,
                errors=errors["status"],
                socket_errors=errors["connect"] + errors["read"] + errors["write"]
                + errors["timeout"],
                p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000)
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}): {done.stderr[-2000:]}"
                       f"{done.stdout[-2000:]}")


@dataclass(frozen=True)
class UploadResult:
    status: int
    seconds: float
    size: int

    @property
    def mb_s(self) -> float:
        return self.size / 2**20 / self.seconds if self.seconds else 0.0


def upload(port: int, path: str, size: int, headers: dict[str, str],
           chunk: int = 1 << 20, timeout: float = 120.0) -> UploadResult:
    """POST `size` bytes with Content-Length, streamed from one reused buffer (the client holds
    1 MiB, whatever the size); timed from connecting to the end of the answer's head."""
    block = memoryview(os.urandom(chunk))
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {size}",
            "Content-Type: application/octet-stream", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        left = size
        try:
            while left:
                piece = block[:min(left, chunk)]
                sock.sendall(piece)
                left -= len(piece)
        except OSError:
            pass  # answered (and closed) early: the status says why
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
    seconds = time.perf_counter() - started
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return UploadResult(status=status, seconds=seconds, size=size)
