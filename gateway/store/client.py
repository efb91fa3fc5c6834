"""Opening the Redis client for the configured topology, and translating Redis errors at this
boundary (SPEC §7).

One client per process, of one of three kinds, all from redis-py:
- one Redis (`redis://`, `rediss://`, `unix://`);
- the master of a Sentinel-managed group (`redis+sentinel://`): redis-py's Sentinel pool asks the
  sentinels for the master on every new connection, and turns a write refused by a demoted master
  (READONLY) into a dropped connection, so the next attempt finds the new one;
- a Redis Cluster (`redis+cluster://`): redis-py's cluster client follows MOVED and ASK itself.

Connections. Every command passes a gate of `redis.pool_size` places per process: past it callers
wait (up to `redis.timeout`) instead of failing, so a burst of cold lookups queues rather than
turning into 503s, and an exhausted gate is reported as such (log and metric), never as an
outage. The pool under the gate is sized to match, so it never refuses a connection itself. A
connection the server closed is retried once on a fresh one (a Redis restart costs no request
once Redis answers again). Connections idle longer than `redis.idle_timeout` are closed by
`close_idle`, which the worker calls periodically. Every connection carries a client name:
`CLIENT LIST` shows `gateway:<host>:<pid>:<role>`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import multiprocessing
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeAlias, TypeVar, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot

from gateway.config import Config
from gateway.errors import PoolExhausted, StoreError, StoreUnavailable
from gateway.store import cluster_asking
from gateway.store.embedded import EmbeddedRedis
from gateway.store.urls import StoreAddress, parse_store_url

log = logging.getLogger(__name__)

cluster_asking.install()  # ASKING on the command's own connection (see that module)

DEFAULT_POOL_SIZE = 64
POOL_SLACK = 4  # connections beyond the gate: the invalidation subscription, a pipeline
EXHAUSTED_LOG_INTERVAL = 10.0

_role: str | None = None


def set_process_role(role: str) -> None:
    """Name this process's part in connection names: `supervisor`, `cli` (a supervised worker
    is `worker-<slot>` by itself)."""
    global _role
    _role = role


def _process_role() -> str:
    if _role is not None:
        return _role
    name = multiprocessing.current_process().name  # the supervisor names its workers
    return "worker-" + name.removeprefix("gateway-worker-") \
        if name.startswith("gateway-worker-") else "main"


def client_name(prefix: str | None = None, role: str | None = None) -> str:
    # CLIENT SETNAME takes no spaces or newlines; a host name has neither, but be sure.
    name = f"{prefix or 'gateway'}:{socket.gethostname()}:{os.getpid()}:" \
           f"{role or _process_role()}"
    return re.sub(r"[^\x21-\x7e]", "_", name)[:128]


class PoolGate:
    """At most `size` store commands of this process at once; the others wait their turn, each
    for at most `timeout` seconds. `peak` (reset by close_idle) says how many connections the
    busiest moment needed."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self.in_use = 0
        self.peak = 0
        self._free = asyncio.Semaphore(size)
        self._said_at = -EXHAUSTED_LOG_INTERVAL

    async def enter(self) -> None:
        if self._free.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._free.acquire()
            except TimeoutError:
                raise self._exhausted() from None
        else:
            await self._free.acquire()  # free: returns without suspending
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

    def leave(self) -> None:
        self.in_use -= 1
        self._free.release()

    def _exhausted(self) -> PoolExhausted:
        # Imported here: the CLI imports this module before `gateway run` sets up the metrics
        # directory, and prometheus-client picks its mode at its own first import.
        from gateway.observability.metrics import STORE_POOL_EXHAUSTED
        STORE_POOL_EXHAUSTED.inc()
        now = time.monotonic()
        if now - self._said_at >= EXHAUSTED_LOG_INTERVAL:  # once per interval, not per request
            self._said_at = now
            log.warning("key store connection pool exhausted: all %d connections busy for "
                        "%.1f s (raise redis.pool_size, or look for a slow Redis)",
                        self.size, self.timeout)
        return PoolExhausted(f"key store connection pool exhausted: all {self.size} "
                             "connections busy")


# Set while the store watch checks the store: readiness must say whether the store can take
# writes, not wait behind (or be refused by) a pool the requests keep busy.
_UNGATED: contextvars.ContextVar[bool] = contextvars.ContextVar("ungated", default=False)


@contextmanager
def ungated() -> Iterator[None]:
    token = _UNGATED.set(True)
    try:
        yield
    finally:
        _UNGATED.reset(token)


async def _through(gate: PoolGate | None, call: Callable[[], Awaitable[Any]]) -> Any:
    """A command through the gate (or straight through, outside the watch's checks)."""
    if gate is None or _UNGATED.get():
        return await call()
    await gate.enter()
    try:
        return await call()
    finally:
        gate.leave()


class GatedRedis(aioredis.Redis):
    """One Redis, or a Sentinel group's master: every command passes the gate."""

    gate: PoolGate | None = None
    address: StoreAddress | None = None
    sentinels: Sentinel | None = None  # their clients are closed with this one

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            for client in self.sentinels.sentinels:
                await client.aclose()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        run = super().execute_command
        return await _through(self.gate, lambda: run(*args, **options))  # type: ignore[no-untyped-call]


class GatedCluster(RedisCluster):
    gate: PoolGate | None = None
    address: StoreAddress | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        run = super().execute_command
        return await _through(self.gate, lambda: run(*args, **kwargs))


Redis: TypeAlias = GatedRedis | GatedCluster


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def subscriber(redis: Redis, attempt: int = 0) -> tuple[aioredis.Redis, bool]:
    """A client for the invalidation subscription, and whether the caller must close it. On a
    cluster, a plain client of one node (a new one at each attempt, going round the nodes):
    PUBLISH reaches every node of a cluster, and a plain connection is not closed under the
    subscriber by the cluster client's slot-map refreshes, as redis-py's cluster pub/sub is
    during a resharding (every cache would be dropped each time)."""
    if not isinstance(redis, RedisCluster):
        return redis, False
    nodes = (redis.get_primaries() or redis.get_nodes()
             or list(redis.nodes_manager.startup_nodes.values()))
    node = nodes[attempt % len(nodes)]
    kwargs = {k: v for k, v in node.connection_kwargs.items()
              if k not in ("event_dispatcher",)}
    pool = aioredis.ConnectionPool(connection_class=node.connection_class, max_connections=2,
                                   **kwargs)
    return aioredis.Redis.from_pool(pool), True


def connect(url: str, timeout: float, *, pool_size: int = DEFAULT_POOL_SIZE,
            role: str | None = None) -> Redis:
    """The client for `url`. Commands are bounded by `timeout`; a connection error is retried
    once on a fresh connection (a server that closed an idle one), nothing else: the callers
    decide what an unavailable store means (stale cache, or 503)."""
    address = parse_store_url(url)
    name = client_name(address.option("client_name"), role)
    common: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
        "decode_responses": False, "health_check_interval": 30, "client_name": name,
        **address.tls_kwargs(),
    }
    client: Redis
    if address.topology == "cluster":
        client = GatedCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in address.hosts],
            username=address.username, password=address.password,
            max_connections=pool_size + POOL_SLACK, **common)
    elif address.topology == "sentinel":
        sentinel_auth = {"username": address.option("sentinel_username"),
                         "password": address.option("sentinel_password")}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(address.hosts),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout,
                             "client_name": name, **address.tls_kwargs(),
                             **{k: v for k, v in sentinel_auth.items() if v is not None}},
            **common)
        client = cast(GatedRedis, sentinel.master_for(
            address.master, redis_class=GatedRedis, db=address.db,
            username=address.username, password=address.password,
            max_connections=pool_size + POOL_SLACK))
        client.sentinels = sentinel
    else:
        pool = BlockingConnectionPool.from_url(
            _without_gateway_options(url), max_connections=pool_size + POOL_SLACK,
            timeout=timeout, **{k: v for k, v in common.items()
                                if k not in address.tls_kwargs()})
        client = cast(GatedRedis, GatedRedis.from_pool(pool))
    client.gate = PoolGate(pool_size, timeout)
    client.address = address
    return client


T = TypeVar("T")


def slot_groups(redis: Redis, names: Sequence[str | bytes]) -> list[list[int]]:
    """Positions in `names`, grouped so that each group's keys share a Redis Cluster slot (one
    script call or MGET may then touch all of them); on one Redis a single group of all."""
    if not isinstance(redis, RedisCluster):
        return [list(range(len(names)))] if names else []
    groups: dict[int, list[int]] = {}
    for position, name in enumerate(names):
        groups.setdefault(key_slot(name.encode() if isinstance(name, str) else name),
                          []).append(position)
    return list(groups.values())


def slot_chunks(redis: Redis, items: Sequence[T], key_of: Callable[[T], str | bytes],
                size: int) -> Iterator[list[T]]:
    """`items` in lists of at most `size`, each within one slot (by the key `key_of` names)."""
    for group in slot_groups(redis, [key_of(item) for item in items]):
        for start in range(0, len(group), size):
            yield [items[i] for i in group[start:start + size]]


def _without_gateway_options(url: str) -> str:
    # client_name is ours (the prefix of the names we give); redis-py would use it whole.
    return re.sub(r"([?&])client_name=[^&]*&?", r"\1", url).rstrip("?&")


def free_connections(redis: Redis) -> Iterator[list[AbstractConnection]]:
    """Each pool's idle connections, reused from the end (redis-py pops the last released)."""
    if isinstance(redis, RedisCluster):
        for node in redis.get_nodes():
            yield list(node._free)
    else:
        yield list(redis.connection_pool._available_connections)


async def close_idle(redis: Redis) -> int:
    """Close the idle connections the busiest moment since the last call did not need.
    Returns how many were closed. (redis-py reconnects a closed pooled connection on use.)"""
    gate = redis.gate
    keep = max(gate.peak if gate is not None else 0, 1)
    if gate is not None:
        gate.peak = gate.in_use
    closed = 0
    for free in free_connections(redis):
        connected = [c for c in free if c.is_connected]
        for connection in connected[:max(len(connected) - keep, 0)]:
            await connection.disconnect()
            closed += 1
    return closed


def connection_count(redis: Redis) -> int:
    """Connections this client holds open now (idle and in use)."""
    if isinstance(redis, RedisCluster):
        return sum(sum(1 for c in node._connections if c.is_connected)
                   for node in redis.get_nodes())
    pool = redis.connection_pool
    every: Iterable[AbstractConnection] = [*pool._available_connections,
                                           *pool._in_use_connections]
    return sum(1 for c in every if c.is_connected)


@contextmanager
def store_errors() -> Iterator[None]:
    """Translate redis-py's exceptions into the gateway's tree."""
    try:
        yield
    except StoreError:
        raise  # already ours (the gate's PoolExhausted)
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError,
            TimeoutError) as exc:
        raise StoreUnavailable(f"key store unavailable: {exc.__class__.__name__}") from exc
    except (redis_errors.ReadOnlyError, redis_errors.ClusterDownError,
            redis_errors.TryAgainError, redis_errors.MasterDownError,
            redis_errors.BusyLoadingError) as exc:
        # A write to a demoted master, a cluster mid-failover or mid-resharding, a server
        # loading its data: the store cannot serve now, and will again.
        raise StoreUnavailable(f"key store unavailable: {exc.__class__.__name__}: {exc}") \
            from exc
    except redis_errors.ResponseError as exc:
        if str(exc).startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY",
                                "LOADING", "MASTERDOWN")):
            raise StoreUnavailable(f"key store unavailable: {exc}") from exc
        raise StoreError(f"key store error: {exc.__class__.__name__}: {exc}") from exc
    except redis_errors.ClusterError as exc:
        # redis-py's cluster client ran out of redirections or retries ("TTL exhausted"):
        # a cluster mid-resharding or mid-failover.
        raise StoreUnavailable(f"key store unavailable: the cluster is changing ({exc})") \
            from exc
    except redis_errors.RedisError as exc:
        raise StoreError(f"key store error: {exc.__class__.__name__}: {exc}") from exc
    except (RuntimeError, AttributeError) as exc:
        # redis-py's async cluster client, when a slot-map refresh closes connections under
        # commands still in flight, raises these from its own internals ("the handler is
        # closed", "'NoneType' object has no attribute 'writelines'", a failed pipeline).
        # Only store calls run inside this block: the store is changing, not our code broken.
        log.debug("store client failed mid-call", exc_info=True)
        raise StoreUnavailable(f"key store unavailable: connection lost mid-call "
                               f"({exc.__class__.__name__})") from exc


@asynccontextmanager
async def open_redis(config: Config, *, role: str | None = None
                     ) -> AsyncIterator[tuple[Redis, str]]:
    """The configured store, for as long as the block runs: the embedded server is started (or
    joined, when a gateway already runs it) first and stopped after, if this process started it.
    Yields the client and the URL it reached."""
    embedded = None
    url = config.redis.url
    if url == "embedded":
        embedded = EmbeddedRedis(config.data_dir)
        url = await asyncio.to_thread(embedded.start)
    redis = connect(url, config.redis.timeout, pool_size=config.redis.pool_size, role=role)
    if isinstance(redis, RedisCluster):
        # Learn the slot map before any traffic: redis-py 8.1's cluster client, first used by
        # many tasks at once, fails some of their commands from its internals.
        try:
            await redis.initialize()
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("key store cluster not reachable at start (%s); trying again on use",
                        exc)
    try:
        yield redis, url
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
