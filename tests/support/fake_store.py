"""A stand-in for the embedded store's server, to show how others wait for it (issue 18).

    python -m tests.support.fake_store DATA_DIR loading SECONDS   # -LOADING, then +PONG
    python -m tests.support.fake_store DATA_DIR silent            # accepts, never answers

Like the real one, it holds `server.lock` (naming its pid) for as long as it runs and listens
on `redis.sock`. It answers PING only; SIGTERM ends it. It prints "ready" once it listens.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import socket
import sys
import time
from pathlib import Path


def main() -> None:
    data_dir, mode = Path(sys.argv[1]), sys.argv[2]
    loading_until = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    lock = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.ftruncate(lock, 0)
    os.write(lock, f"pid {os.getpid()} fake store\n".encode())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(data_dir / "redis.sock"))
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                selector.register(listener.accept()[0], selectors.EVENT_READ)
                continue
            data = sock.recv(4096)
            if not data:
                selector.unregister(sock)
                sock.close()
            elif mode == "loading":
                reply = (b"-LOADING the fake store is loading the dataset in memory\r\n"
                         if time.monotonic() < loading_until else b"+PONG\r\n")
                sock.sendall(reply * data.count(b"PING"))


if __name__ == "__main__":
    main()
