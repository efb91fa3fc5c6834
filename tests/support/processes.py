"""Run the real `gateway` command as a child process, the way an operator would."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.redis_server import free_port


def write_config(path: Path, redis_url: str, routes: list[dict[str, Any]],
                 **sections: Any) -> tuple[Path, int, int]:
    """Write a config with free proxy/admin ports; return its path and the two ports."""
    port, admin_port = free_port(), free_port()
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "redis": {"url": redis_url},
        # Out of the way of tests that send many failing authentications from 127.0.0.1;
        # a test of brute-force protection passes its own `brute_force` section.
        "brute_force": {"max_failures": 1_000_000},
        "routes": routes,
    }
    data.update(sections)
    path.write_text(yaml.safe_dump(data))
    return path, port, admin_port


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]



def cli_with_terminal(args: tuple[str, ...], answer: str, env: dict[str, str],
                      cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS` with a terminal as stdin and `answer` typed into it (a prompt's reply)."""
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(gateway_command(*args), stdin=slave, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        os.close(slave)
        slave = -1
        os.write(master, answer.encode())
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            raise AssertionError(f"the CLI hung on its prompt:\n{stdout}\n{stderr}") from None
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


class GatewayProcess:
    def __init__(self, config_path: Path, port: int, admin_port: int,
                 env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ("--workers", "1"),
                 cwd: Path | None = None, terminal: bool = False) -> None:
        self.config_path = config_path
        self.port = port
        self.admin_port = admin_port
        self.env = {**os.environ, **(env or {})}
        self.extra_args = extra_args
        self.cwd = cwd  # None: this process's
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.with_suffix(".log")
        # True: stdout is a terminal (a pty, copied into the log), as in `./scripts/run`.
        self.terminal = terminal
        self._copier: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        log = self.log_path.open("ab")
        if self.terminal:
            terminal, stdout = pty.openpty()
            self.process = subprocess.Popen(
                gateway_command("run", "--config", str(self.config_path), *self.extra_args),
                env=self.env, stdout=stdout, stderr=log, stdin=subprocess.DEVNULL, cwd=self.cwd)
            os.close(stdout)
            self._copier = threading.Thread(target=_copy, args=(terminal, self.log_path),
                                            daemon=True)
            self._copier.start()
        else:
            self.process = subprocess.Popen(
                gateway_command("run", "--config", str(self.config_path), *self.extra_args),
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.cwd)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited at start:\n{self.log()}")
            try:
                # Ready: the store answers and (with workers) every worker is listening.
                with urllib.request.urlopen(self.admin_url + "/readyz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        if self._copier is not None:
            self._copier.join(5)
            self._copier = None
        return code

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak so far) of the gateway process, in KiB."""
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields


def _copy(terminal: int, log_path: Path) -> None:
    """What the gateway writes to its terminal, into the log, until it closes it."""
    with log_path.open("ab") as log:
        while True:
            try:
                data = os.read(terminal, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not data:
                break
            log.write(data)
            log.flush()
    os.close(terminal)
