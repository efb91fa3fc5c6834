"""Locks and the liveness probe of the embedded store (SPEC §7: one data directory, one server,
one owner). How gateway/store/embedded.py uses them is explained there.

- `LockFile`: an flock(2) on a file in the data directory. The lock belongs to the open file,
  so it is held as long as any process keeps a descriptor of it: a server that inherited one
  holds it until it exits, however it exits, and the kernel drops it then.
- `probe`: one PING on the unix socket, and what the answer says: it answered, it is loading
  its data (or busy), it accepted but said nothing yet (paused, blocked), or nobody listens.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import socket
import time
from pathlib import Path

POLL = 0.05


class LockFile:
    """One open file description of `path`, and the flock on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited unless passed

    def try_lock(self, exclusive: bool = True) -> bool:
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def lock(self, exclusive: bool, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the lock; False if it did not come."""
        deadline = time.monotonic() + timeout
        while not self.try_lock(exclusive):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        return True

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def write(self, text: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def read(self) -> str:
        return os.pread(self.fd, 4096, 0).decode(errors="replace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> LockFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def holder_pid(text: str) -> int | None:
    """The pid a lock file names ("pid 1234 ..."), or None."""
    words = text.split()
    if len(words) >= 2 and words[0] == "pid" and words[1].isdigit():
        return int(words[1])
    return None


class Answer(enum.Enum):
    PONG = "answers"
    LOADING = "is loading its data"
    BUSY = "is busy"  # -BUSY (a long script) or another error: alive, not ready
    SILENT = "accepts connections but does not answer"  # paused, or blocked
    ABSENT = "does not listen"  # no socket, or nobody behind it

    @property
    def alive(self) -> bool:
        return self is not Answer.ABSENT


def probe(path: Path, timeout: float) -> Answer:
    """PING the server on the unix socket at `path`; wait up to `timeout` for its reply."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
                return Answer.ABSENT
            except (BlockingIOError, TimeoutError):
                return Answer.SILENT  # its backlog is full: someone is there, not accepting
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except TimeoutError:
        return Answer.SILENT
    except OSError:
        return Answer.ABSENT  # reset, or closed under us
    if reply.startswith(b"+PONG"):
        return Answer.PONG
    if reply.startswith(b"-LOADING"):
        return Answer.LOADING
    return Answer.BUSY if reply else Answer.ABSENT


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
