"""Process lifetime: start the store, the upstream pool and both listeners; stop them in order.

`serve()` is the whole gateway as an async context manager, so tests run the real thing
in-process on ephemeral ports and `run()` is a thin wrapper that waits for a signal.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import uvloop
from aiohttp import web

from gateway.admin.app import create_admin_app, create_status_app
from gateway.auth.authenticator import Authenticator
from gateway.auth.throttle import BLOCKS, FailureThrottle
from gateway.config import Config, StatusConfig
from gateway.demo import ensure_demo_key, start_demo_upstreams
from gateway.errors import StoreError
from gateway.keys.cache import InvalidationListener, KeyCache
from gateway.keys.secrets import MasterKeyError, MasterKeys, SecretBox, load_master_key
from gateway.keys.store import KeyStore
from gateway.keys.usage import UsageRecorder
from gateway.limits.applied import limit_settings
from gateway.limits.local import LeaseTable
from gateway.limits.sync import LimitSync
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import CONFIG_RELOADS
from gateway.observability.tally import TALLY
from gateway.proxy.handler import ProxyHandler, ProxyState
from gateway.proxy.listener import ProxyServer
from gateway.proxy.tls import ServerTls, TlsLoadError
from gateway.proxy.upstream import UpstreamPool
from gateway.reload import ConfigReloader
from gateway.store.client import Redis, open_redis
from gateway.store.watch import StoreWatch
from gateway.tasks import stop_task

log = logging.getLogger(__name__)
GC_YOUNG_THRESHOLD = 20_000


class ShutdownPhase:
    """SIGTERM's first phase (issue 19): still serving, but /readyz says 503 so that load
    balancers and Kubernetes stop sending new connections before the listener closes."""

    def __init__(self) -> None:
        self.started = False

    def readiness(self) -> str | None:
        return "shutting down" if self.started else None


@dataclass(frozen=True, slots=True)
class RunningGateway:
    proxy_port: int
    admin_port: int | None  # None for a worker, whose supervisor serves the admin listener
    redis_url: str
    redis: Redis
    handler: ProxyHandler
    cache: KeyCache
    usage: UsageRecorder
    listener: InvalidationListener
    reloader: ConfigReloader
    access_log: AccessLog
    status_port: int | None = None  # None: no status listener in this process
    shutdown: ShutdownPhase = field(default_factory=ShutdownPhase)
    tls: ServerTls | None = None  # the proxy listener's, when it terminates TLS

    def apply(self, new: Config) -> None:
        """A reloaded config (validated already): routes and settings for new requests, and
        the certificate files read again for new connections."""
        apply_config(self.handler, self.tls, new)


def apply_config(handler: ProxyHandler, tls: ServerTls | None, new: Config) -> None:
    handler.reload(new)
    if tls is not None and new.listen.tls is not None:
        try:
            tls.reload(new.listen.tls)
        except TlsLoadError as exc:
            # Validated when the file was read, so the files changed since: keep the running
            # certificate, and say so as a failed reload does.
            CONFIG_RELOADS.labels("error").inc()
            log.error("TLS files not reloaded, keeping the running certificate: %s", exc)


async def start_status_listener(status: StatusConfig, app: web.Application) -> web.AppRunner:
    """The status listener, served by the process that serves the admin listener (the
    supervisor under `--workers N`)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, status.host, status.port).start()
    return runner


def _bound_port(runner: web.BaseRunner) -> int:
    return int(runner.addresses[0][1])


@asynccontextmanager
async def serve(config: Config, *, demo: bool = False, env: Mapping[str, str] | None = None,
                admin: bool = True, reuse_port: bool = False,
                workers: int = 1) -> AsyncIterator[RunningGateway]:
    """The gateway in this process: the proxy listener and (unless `admin` is False, as in a
    supervised worker) the admin listener. `workers`: how many processes serve the port."""
    # Started in order, stopped in reverse: requests drain first, then last-use data is
    # flushed, then the store goes away.
    async with AsyncExitStack() as stack:
        redis, redis_url = await stack.enter_async_context(open_redis(config))
        store = KeyStore(redis, confirm_replicas=config.redis.replicas_to_confirm,
                         confirm_timeout=config.redis.timeout / 2)
        stack.callback(store.close)
        await migrate_layout(store)
        secret_box = await _secret_box(config, store)
        watch = StoreWatch(redis, config.redis.timeout, config.redis.idle_timeout,
                           confirm_replicas=config.redis.replicas_to_confirm,
                           on_confirm=store.confirm)
        await watch.check()  # says at once what is wrong with the store, if anything
        watch.start()
        stack.push_async_callback(watch.stop)

        cache = KeyCache(store, config.keys)
        throttle = FailureThrottle(redis, config.brute_force, workers=workers)
        throttle.start()
        stack.push_async_callback(throttle.close)
        listener = InvalidationListener(redis, cache, handlers={BLOCKS: throttle.handle_message})
        listener.start()
        stack.push_async_callback(listener.stop)
        # A Sentinel failover: claims and subscription move to the new master at once.
        watch.on_master_change += [store.reopen, listener.resubscribe]
        # Lookups that race the first subscription are not cached (subscribing drops the
        # cache), so give it a moment; a store that is down must not stop the gateway starting.
        try:
            async with asyncio.timeout(config.redis.timeout):  # (not wait_for: gateway.tasks)
                await listener.subscribed.wait()
        except TimeoutError:
            log.warning("key store not reachable at start; serving, and retrying in the "
                        "background")

        tally = asyncio.get_running_loop().create_task(TALLY.run())
        stack.push_async_callback(stop_task, tally)

        usage = UsageRecorder(store, config.keys.last_used_flush)
        usage.start()
        stack.push_async_callback(usage.close)

        if demo:
            for runner in await start_demo_upstreams(config):
                stack.push_async_callback(runner.cleanup)
            await ensure_demo_key(store, config)

        pool = UpstreamPool()
        await pool.start()
        stack.push_async_callback(pool.close)

        # Rate limits and quotas: decided in this worker from leases the background sync
        # takes from Redis (gateway/limits). Stopped after the drain: its last sync gives
        # unused tokens back and flushes the usage counts.
        limiter = LimitSync(redis, LeaseTable(limit_settings(config.limits.fail_open)))
        limiter.start()
        stack.push_async_callback(limiter.stop)

        access_log = AccessLog(enabled=config.log.access_log)
        stack.callback(access_log.flush)
        authenticator = Authenticator(cache, usage, store, config.hmac, secret_box)
        handler = ProxyHandler(ProxyState.from_config(config), pool, authenticator, access_log,
                               throttle, limiter)

        tls = ServerTls(config.listen.tls) if config.listen.tls is not None else None

        async def apply(new: Config) -> None:
            apply_config(handler, tls, new)

        reloader = ConfigReloader(lambda: handler.state.config, apply, env or {})
        proxy_server = ProxyServer(handler, tls)
        proxy_port = await proxy_server.start(config.listen.host, config.listen.port,
                                              reuse_port=reuse_port)
        # The drain reads the config current at stop time, so a reload can change it.
        stack.push_async_callback(
            lambda: proxy_server.close(handler.state.config.listen.drain_timeout))

        shutdown = ShutdownPhase()
        admin_port = None
        if admin:
            admin_runner = web.AppRunner(
                create_admin_app(store, lambda: handler.state.config, reloader,
                                 readiness=shutdown.readiness,
                                 secret_box=secret_box, proxy_port=proxy_port,
                                 store_watch=watch),
                access_log=None)
            await admin_runner.setup()
            stack.push_async_callback(admin_runner.cleanup)
            await web.TCPSite(admin_runner, config.admin.host, config.admin.port).start()
            admin_port = _bound_port(admin_runner)

        status_port = None
        if admin and config.status is not None:
            status_runner = await start_status_listener(
                config.status, create_status_app(store, lambda: handler.state.config,
                                                 readiness=shutdown.readiness,
                                                 secret_box=secret_box, store_watch=watch))
            stack.push_async_callback(status_runner.cleanup)
            status_port = _bound_port(status_runner)

        yield RunningGateway(proxy_port=proxy_port, admin_port=admin_port,
                             status_port=status_port, shutdown=shutdown,
                             redis_url=redis_url, redis=redis, handler=handler, cache=cache,
                             usage=usage, listener=listener, reloader=reloader,
                             access_log=access_log, tls=tls)


async def migrate_layout(store: KeyStore) -> None:
    """Bring data written by an older gateway to this layout (idempotent; several instances
    may run it at once). A store that is down now is migrated by a later start."""
    try:
        await store.migrate()
    except StoreError as exc:
        log.warning("could not check the store's layout at start-up: %s", exc)


async def check_master_key(master_key: MasterKeys | None, store: KeyStore) -> None:
    """HMAC keys in the store and no master key is a configuration error, said at start-up
    rather than on the first signed request."""
    if master_key is not None:
        return
    try:
        count = await store.hmac_key_count()
    except StoreError:
        log.warning("could not check the store for HMAC keys at start-up")
        return
    if count:
        raise MasterKeyError(f"the key store holds {count} HMAC key(s) but no master key is "
                             "configured: set GATEWAY_MASTER_KEY")


async def _secret_box(config: Config, store: KeyStore) -> SecretBox | None:
    # The embedded store's master key exists from its first start (issue 17, item 9): a
    # gateway started before the first HMAC key was made holds it already.
    master_key = load_master_key(config, create=True)
    await check_master_key(master_key, store)
    return SecretBox(master_key) if master_key is not None else None


def settle_heap() -> None:
    """Called once a serving process has started: everything allocated so far (modules,
    config, caches' structures) lives as long as the process, so it is moved out of the
    collector's sight (gc.freeze), and the youngest generation is collected every
    GC_YOUNG_THRESHOLD allocations instead of 700. A proxied request leaves a few reference
    cycles (a task and its coroutine frames), so collection stays on; at the default
    threshold it ran every dozen requests and scanned the objects of the requests in flight."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _main(config: Config, demo: bool, env: Mapping[str, str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(config, demo=demo, env=env) as running:
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: asyncio.ensure_future(running.reloader.reload()))
        if running.status_port is not None:
            log.info("status listener (/healthz, /readyz, /metrics) on http://%s:%d",
                     config.status.host if config.status else "", running.status_port)
        log.info("gateway listening on %s://%s:%d (admin on http://%s:%d), key store %s",
                 "https" if running.tls else "http", config.listen.host, running.proxy_port,
                 config.admin.host, running.admin_port,
                 "embedded" if config.redis.url == "embedded" else "external")
        settle_heap()
        await stop.wait()
        delay = running.handler.state.config.shutdown.delay
        if delay > 0:
            running.shutdown.started = True
            log.info("stopping: serving %.3g s more with /readyz at 503 (shutdown.delay)", delay)
            await asyncio.sleep(delay)
        log.info("stopping: draining requests in flight")
    log.info("stopped")


def run(config: Config, *, demo: bool = False, env: Mapping[str, str] | None = None) -> None:
    uvloop.run(_main(config, demo, env or {}))
