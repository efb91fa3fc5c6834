"""Each process's view of its store (SPEC §7, §9): can it take writes, and if not why, and which
of its settings put the gateway's data at risk. Checked every second in the background (so the
`gateway_store_up` gauge and the log follow the store) and afresh by every `/readyz`.

Following a failover: a Sentinel-managed client only asks the sentinels for the master when it
opens a connection, and reads keep working on a demoted master, so its pooled connections could
stay there for good. Worse, after `SENTINEL FAILOVER` the old master goes on taking writes for
about ten seconds before the sentinels demote it, and those writes (a revocation, a nonce) are
lost when it resyncs from the new one. So every check asks the sentinels which master they
name: when it changes, redis-py drops the idle connections to the old one (the busy ones as
they come back), and the watch tells its listeners (`on_master_change`): the nonce connection
reopens and the invalidation subscription moves, dropping the key cache, since what was
published on the new master never reached a subscriber of the old.

Confirmed writes (`redis.confirm_replicas`, on by default with Sentinel): a write is answered
only once a replica holds it, so the old master of a failover, cut off from its replicas once
the new one is promoted, can confirm nothing, and the revocations it takes are answered 503
rather than lost. But a master with no replica at all (the new master after a crash, until the
old one comes back as its replica) could then take no write. So the watch sets how many
replicas a write waits for: the configured number while the master has them, or had them in
the last CONFIRM_GRACE seconds (longer than the sentinels take to name a new master after
cutting the old one off); else as many as it has.

The same loop closes pooled connections left idle for `redis.idle_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio.connection import ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.observability.metrics import STORE_UP, STORE_WARNINGS
from gateway.store.client import GatedRedis, Redis, close_idle, ungated
from gateway.store.health import StoreHealth, check_store
from gateway.tasks import Periodic

log = logging.getLogger(__name__)

INTERVAL = 1.0
SETTINGS_INTERVAL = 60.0  # the eviction and persistence settings change rarely
# Longer than the sentinels take from promoting a replica (the old master is cut off) to naming
# it (about a second), so the old master never gets to take unconfirmed writes; short enough
# that writes resume within seconds on a new master that has no replica yet.
CONFIRM_GRACE = 3.0


class StoreWatch:
    def __init__(self, redis: Redis, timeout: float, idle_timeout: float, *,
                 confirm_replicas: int = 0,
                 on_confirm: Callable[[int], None] | None = None) -> None:
        self.redis = redis
        self.confirm_replicas = confirm_replicas
        self.on_confirm = on_confirm  # told how many replicas writes wait for, when it changes
        self._confirming = confirm_replicas
        self._had_replicas_at = float("-inf")
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.health: StoreHealth | None = None
        self._warned: set[str] = set()
        self._settings_at = float("-inf")
        self.on_master_change: list[Callable[[], None]] = []
        self._master: tuple[str, int] | None = None
        self._checks = Periodic("store watch", lambda: INTERVAL, self._check_quietly)
        self._reaper = Periodic("idle store connections", lambda: self.idle_timeout,
                                self._close_idle)

    def start(self) -> None:
        self._checks.start()
        self._reaper.start()

    async def stop(self) -> None:
        await self._checks.stop()
        await self._reaper.stop()

    async def check(self) -> StoreHealth:
        """Check now; follow a Sentinel failover when the store cannot take writes."""
        now = time.monotonic()
        with_settings = now - self._settings_at >= SETTINGS_INTERVAL
        with ungated():
            health = await check_store(self.redis, timeout=self.timeout, settings=with_settings)
        if with_settings and health.writable:
            self._settings_at = now
            self._say_warnings(health.warnings)
        elif self.health is not None:
            # Not read this time: the last reading still holds.
            health = StoreHealth(health.writable, health.reason, self.health.warnings)
        await self._follow_master()
        if self.confirm_replicas:
            await self._set_confirmation(now)
        self._say_transition(health)
        self.health = health
        STORE_UP.set(1 if health.writable else 0)
        return health

    async def _check_quietly(self) -> None:
        await self.check()  # check_store never raises for a store that is down

    async def _follow_master(self) -> None:
        """Follow the master named by the sentinel with the newest configuration epoch (right
        after a failover the others still name the old one for a second or two, and redis-py
        asks whichever answers first): put that sentinel first, so every new connection asks
        it, and when the master changed drop every connection, the busy ones too (their
        command is retried once, on the new master). redis-py itself drops only the idle ones,
        and its asyncio pool keeps the busy ones talking to the old master after they return."""
        if not isinstance(self.redis, GatedRedis) or self.redis.sentinels is None:
            return
        assert self.redis.address is not None
        sentinels = self.redis.sentinels.sentinels
        with ungated():
            try:
                async with asyncio.timeout(self.timeout):
                    states = await asyncio.gather(
                        *(sentinel.sentinel_master(self.redis.address.master)
                          for sentinel in sentinels), return_exceptions=True)
            except TimeoutError:
                return
        newest: tuple[int, int, tuple[str, int]] | None = None
        for index, state in enumerate(states):
            if isinstance(state, dict) and state.get("is_master") and \
                    not state.get("is_sdown") and not state.get("is_odown"):
                candidate = (int(state.get("config-epoch", 0)), -index,
                             (str(state["ip"]), int(state["port"])))
                newest = candidate if newest is None or candidate > newest else newest
        if newest is None:
            log.debug("no sentinel names a master now")
            return
        _, minus_index, master = newest
        if minus_index:
            sentinels.insert(0, sentinels.pop(-minus_index))
        if self._master is not None and master != self._master:
            log.warning("the sentinels name a new master: %s:%d (was %s:%d)", *master,
                        *self._master)
            pool = self.redis.connection_pool
            assert isinstance(pool, SentinelConnectionPool)
            pool.master_address = master
            await pool.disconnect(inuse_connections=True)
            for listener in self.on_master_change:
                listener()
        self._master = master

    async def _set_confirmation(self, now: float) -> None:
        """Writes wait for the configured number of replicas, unless the server the pool
        reaches is the master the newest sentinel names, it has fewer, and it has had fewer for
        CONFIRM_GRACE: a master cut off by a failover is no longer named, or within the grace."""
        if not isinstance(self.redis, GatedRedis) or self.redis.sentinels is None:
            return
        pool = self.redis.connection_pool
        try:
            with ungated():
                async with asyncio.timeout(self.timeout):
                    where, replicas = await _replication_of(pool)
        except Exception as exc:  # a store that is down confirms nothing anyway
            log.debug("replication not readable: %s", exc)
            return
        if replicas >= self.confirm_replicas:
            self._had_replicas_at = now
        # A connection opened from a lagging sentinel's answer while the master changed still
        # reaches the old one: writes stay confirmed until none is left.
        stale = [c for c in (*pool._available_connections,
                             *pool._in_use_connections)
                 if c.is_connected and (str(c.host), int(c.port)) != self._master]  # type: ignore[attr-defined]
        if stale:
            await pool.disconnect(inuse_connections=True)
        wanted = self.confirm_replicas
        if not stale and where == self._master and \
                now - self._had_replicas_at >= CONFIRM_GRACE:
            wanted = min(replicas, self.confirm_replicas)
        if wanted != self._confirming:
            log.warning("writes now wait for %d replica(s) (the master %s:%d has %d; "
                        "redis.confirm_replicas is %d)", wanted, *where, replicas,
                        self.confirm_replicas)
            self._confirming = wanted
            if self.on_confirm is not None:
                self.on_confirm(wanted)

    def _say_transition(self, health: StoreHealth) -> None:
        before = self.health
        if not health.writable and (before is None or before.writable
                                    or before.reason != health.reason):
            log.warning("key store cannot take writes: %s", health.reason)
        elif health.writable and before is not None and not before.writable:
            log.info("key store takes writes again")

    def _say_warnings(self, warnings: tuple[str, ...]) -> None:
        for setting in ("maxmemory-policy", "persistence", "settings"):
            STORE_WARNINGS.labels(setting).set(
                sum(1 for w in warnings if _setting_of(w) == setting))
        for warning in warnings:
            if warning not in self._warned:
                log.warning("key store setting: %s", warning)
        self._warned = set(warnings)

    async def _close_idle(self) -> None:
        closed = await close_idle(self.redis)
        if closed:
            log.debug("closed %d idle store connection(s)", closed)


def _setting_of(warning: str) -> str:
    """The metric label of a warning of check_store: which setting it is about."""
    if "maxmemory-policy" in warning:
        return "maxmemory-policy"
    if "persist" in warning or "appendonly" in warning:
        return "persistence"
    return "settings"


async def _replication_of(pool: ConnectionPool) -> tuple[tuple[str, int], int]:
    """Which server the pool's connections reach, and how many replicas it has: asked on one
    of those connections (the writes' own view, which may lag the sentinels')."""
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_command("INFO", "replication")
        raw = await connection.read_response()
        where = (str(connection.host), int(connection.port))
    finally:
        await pool.release(connection)
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    # Only replicas in sync count: one still loading its first copy (`connected_slaves`
    # counts it) would make every confirmed write wait out its timeout.
    online = sum(1 for line in text.splitlines()
                 if line.startswith("slave") and "state=online" in line)
    return where, online


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
