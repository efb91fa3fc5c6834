"""A real redis-server for tests: the one on PATH (CI installs Debian's, built with TLS), else
the server the embedded store uses (gateway/store/server_binary.py).

Each instance owns a temporary directory, listens on a unix socket and a TCP port, and can be
stopped and started again on the same addresses (to show what the gateway does while the store
is away).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from gateway.store.embedded import find_redis_server, ping_socket


def server_binary() -> str:
    return shutil.which("redis-server") or find_redis_server()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, persistent: bool = False, extra_args: Sequence[str] = ()) -> None:
        self.persistent = persistent
        self.extra_args = list(extra_args)  # e.g. --requirepass, or the --tls-* options
        # Short path: unix socket paths are limited to 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="gwredis-", dir="/tmp"))
        self.socket_path = self.dir / "redis.sock"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._stats_client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", str(self.socket_path), "--dir", str(self.dir),
             "--save", "", "--daemonize", "no",
             # Persistent servers keep every write across a kill -9 (to show recovery).
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        # Up once it answers at all: a PONG, or the NOAUTH of a server that wants a password.
        while not ping_socket(self.socket_path, replies=(b"+PONG", b"-NOAUTH")):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("test redis-server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # an abrupt loss, as when the store host goes away
            self.process.wait()
        self.process = None

    def close(self) -> None:
        if self._stats_client is not None:
            self._stats_client.close()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path))

    def command_stats(self) -> dict[str, int]:
        """Calls per command so far. One long-lived connection asks, so that asking adds only
        the INFO calls themselves (a new connection would add its handshake commands)."""
        if self._stats_client is None:
            self._stats_client = self.client()
        stats = self._stats_client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def command_count(self) -> int:
        """Commands the server has executed, not counting the INFO/CONFIG/FLUSHALL of tests."""
        return sum(calls for name, calls in self.command_stats().items()
                   if name not in ("info", "config", "flushall"))

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()
            client.config_resetstat()
