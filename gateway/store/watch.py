"""Each process's view of its store (SPEC §7, §9): can it take writes, and if not why, and which
of its settings put the gateway's data at risk. Checked every second in the background (so the
`gateway_store_up` gauge and the log follow the store) and afresh by every `/readyz`.

Following a failover: a Sentinel-managed client only asks the sentinels for the master when it
opens a connection, and reads keep working on a demoted master (now a replica), so its pooled
connections could stay there for good. When the check finds the store not writable, the watch
asks the sentinels again; redis-py then drops the idle connections to the old master, and the
next command opens one to the new. (Writes that meet READONLY meanwhile are dropped and retried
once by redis-py itself.)

The same loop closes pooled connections left idle for `redis.idle_timeout`.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.observability.metrics import STORE_UP, STORE_WARNINGS
from gateway.store.client import GatedRedis, Redis, close_idle, ungated
from gateway.store.health import StoreHealth, check_store
from gateway.tasks import Periodic

log = logging.getLogger(__name__)

INTERVAL = 1.0
SETTINGS_INTERVAL = 60.0  # the eviction and persistence settings change rarely


class StoreWatch:
    def __init__(self, redis: Redis, timeout: float, idle_timeout: float) -> None:
        self.redis = redis
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.health: StoreHealth | None = None
        self._warned: set[str] = set()
        self._settings_at = float("-inf")
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
        if not health.writable:
            await self._follow_master()
        self._say_transition(health)
        self.health = health
        STORE_UP.set(1 if health.writable else 0)
        return health

    async def _check_quietly(self) -> None:
        await self.check()  # check_store never raises for a store that is down

    async def _follow_master(self) -> None:
        if not isinstance(self.redis, GatedRedis):
            return
        pool = self.redis.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            try:
                # Drops the idle connections to an old master.
                await pool.get_master_address()  # type: ignore[no-untyped-call]
            except Exception as exc:  # no master known yet: the next check asks again
                log.debug("sentinels name no master yet: %s", exc)

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
