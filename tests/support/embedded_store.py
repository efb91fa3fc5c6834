"""Helpers for the embedded store's tests: the `gateway` CLI in a clean environment, and what
runs on a data directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from tests.support.processes import gateway_command


def stop_leftovers(data_dir: Path) -> None:
    for pid in servers_on(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def servers_on(data_dir: Path) -> list[int]:
    """Pids of the server processes running on `data_dir`'s socket (from /proc)."""
    # The server's process title names its socket ("valkey-server unixsocket:/…/redis.sock").
    needle = str(data_dir / "redis.sock").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def server_lifetimes(log_text: str) -> tuple[int, int]:
    """(servers started, most running at once), from the servers' shared log file: each line
    starts with "PID:ROLE"; a server starts with "Server initialized" and ends with "ready to
    exit". Lines are appended in the order they happen, so overlapping lifetimes interleave."""
    running: set[str] = set()
    started = most = 0
    for line in log_text.splitlines():
        pid = line.split(":", 1)[0]
        if "Server initialized" in line:
            running.add(pid)
            started += 1
            most = max(most, len(running))
        elif "ready to exit" in line:
            running.discard(pid)
    return started, most


def cli(config_path: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_command(*args, "--config", str(config_path)),
                          capture_output=True, text=True, timeout=120,
                          env={**clean_env(), **(env or {})})


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("GATEWAY_CONFIG", "GATEWAY_REDIS_URL", "GATEWAY_DATA_DIR",
                 "GATEWAY_REDIS_SERVER"):
        env.pop(name, None)
    return env
