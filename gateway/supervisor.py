"""`gateway run --workers N` (SPEC §9): one supervisor, N worker processes on one port.

The supervisor owns what there must be one of: the embedded Redis, the admin listener (health,
`/metrics` over all workers, the admin API, reload), the demo upstreams. Each worker runs the
proxy listener with SO_REUSEPORT, so the kernel spreads connections over them. A worker that
dies is replaced; SIGHUP or `POST /admin/reload` validates the file once, in the supervisor, and
hands the new config to every worker over its control pipe; SIGTERM makes every worker stop
accepting, finish what it has in flight (up to `listen.drain_timeout`), flush its last-use data
and exit (a worker still starting gives its start-up up), and then the supervisor stops too. A
worker whose supervisor is gone (killed, crashed) stops as if sent SIGTERM, and exits within the
drain timeout and EXIT_GRACE whatever hangs (see _Lifeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop
from aiohttp import web

from gateway.config import Config
from gateway.datadir import private_dir

if TYPE_CHECKING:
    from gateway.server import RunningGateway  # imported at run time in the worker only

log = logging.getLogger(__name__)

MONITOR_INTERVAL = 0.2
RESTART_BACKOFF = 1.0  # a worker that dies within this long of starting waits this long
STOP_GRACE = 10.0  # beyond the drain timeout, before a stuck worker is killed
EXIT_GRACE = 5.0  # beyond the drain timeout, before a worker whose supervisor is gone exits
METRICS_DIR = "metrics"


def metrics_dir(config: Config) -> Path:
    return Path(config.data_dir).resolve() / METRICS_DIR


def prepare_metrics_dir(config: Config) -> Path:
    """An empty directory for this run's metric files. Must happen before prometheus-client is
    imported anywhere in this process tree: it chooses its storage at import time."""
    path = metrics_dir(config)
    shutil.rmtree(path, ignore_errors=True)
    private_dir(path.parent)  # the data directory, made private before anything is in it
    return private_dir(path)


# -- the worker side -----------------------------------------------------------------------------

class _Lifeline:
    """Ends this worker when its supervisor is gone (killed, crashed), at any stage: starting,
    serving or stopping. A daemon thread waits on the sentinel multiprocessing gives a spawned
    child (a pipe whose other end only the supervisor holds: it reads end-of-file the moment
    the supervisor's process is gone, however it went). Then the worker is sent SIGTERM, as the
    supervisor would have, and stops gracefully; if it is still there `grace` seconds later
    (something hangs, or the event loop is blocked), the thread ends the process.

    A thread rather than the event loop: the loop may be what hangs, or not run yet. The
    sentinel rather than polling getppid(): it costs nothing until it fires, and cannot miss a
    loss that came before the thread started. Not prctl(PR_SET_PDEATHSIG): Linux only, sent
    when the supervisor's thread that started the worker ends rather than its process, lost
    if the supervisor dies before the worker has set it, and no bound on a stop that hangs."""

    def __init__(self, grace: float) -> None:
        self.grace = grace  # read when the supervisor is gone: a reload may change it

    def start(self) -> None:
        parent = multiprocessing.parent_process()
        if parent is not None:  # (None: not a spawned child, as when run in a test)
            threading.Thread(target=self._watch, args=(parent.sentinel,), daemon=True,
                             name="supervisor-lifeline").start()

    def _watch(self, sentinel: int) -> None:
        multiprocessing.connection.wait([sentinel])
        log.warning("the supervisor is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)
        grace = self.grace
        time.sleep(grace)
        log.error("the supervisor is gone and this worker did not stop within %.0f s; "
                  "exiting now (its threads' stacks follow)", grace)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)


def _worker_main(config: Config, conn: multiprocessing.connection.Connection,
                 log_level: str, workers: int = 1) -> None:
    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] "
                               "%(name)s: %(message)s")
    # Ctrl-C, or a closing terminal's SIGHUP, reaches the whole process group: the supervisor
    # decides what they mean (stop, reload) and tells the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lifeline = _Lifeline(config.listen.drain_timeout + config.shutdown.delay + EXIT_GRACE)
    lifeline.start()
    uvloop.run(_worker(config, conn, workers, lifeline))


async def _worker(config: Config, conn: multiprocessing.connection.Connection,
                  workers: int = 1, lifeline: _Lifeline | None = None) -> None:
    """Serve until SIGTERM (from the supervisor, or from the lifeline), then drain. A SIGTERM
    while still starting (the store may not answer yet) gives the start-up up instead."""
    from gateway.server import serve, settle_heap  # in the worker only: imports prometheus

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stop = asyncio.Event()
    serving = False
    live: RunningGateway | None = None
    delayed = False

    def on_stop() -> None:
        nonlocal delayed
        if not serving or live is None:
            stop.set()
            if main is not None:
                main.cancel()
            return
        if stop.is_set() or delayed:
            return  # already on its way (the signal comes from the supervisor and the group)
        delay = live.handler.state.config.shutdown.delay  # as reloaded
        if delay <= 0:
            stop.set()
            return
        # Keep serving while load balancers notice the supervisor's /readyz at 503.
        delayed = True
        log.info("stopping in %.3g s (shutdown.delay)", delay)
        loop.call_later(delay, stop.set)

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    try:
        async with serve(config, admin=False, reuse_port=True, workers=workers) as running:
            serving = True
            live = running

            def on_message() -> None:
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    loop.remove_reader(conn.fileno())
                    stop.set()  # the supervisor is gone: no one to say "not ready", no delay
                    return
                if kind == "reload":
                    running.apply(payload)
                    if lifeline is not None:
                        lifeline.grace = (payload.listen.drain_timeout
                                          + payload.shutdown.delay + EXIT_GRACE)
                    log.info("config %s applied", payload.digest)

            loop.add_reader(conn.fileno(), on_message)
            settle_heap()
            with contextlib.suppress(OSError):  # the supervisor is gone: stop is on its way
                conn.send(("ready", os.getpid()))
            await stop.wait()
            loop.remove_reader(conn.fileno())
            log.info("draining requests in flight")
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        log.info("stopped while starting")


# -- the supervisor side -------------------------------------------------------------------------

@dataclass
class _Worker:
    process: BaseProcess
    conn: multiprocessing.connection.Connection
    started: float
    ready: bool = False


class Supervisor:
    def __init__(self, config: Config, workers: int, env: Mapping[str, str], demo: bool,
                 log_level: str) -> None:
        self.config = config
        self.count = workers
        self.env = env
        self.demo = demo
        self.log_level = log_level
        self.workers: list[_Worker | None] = [None] * workers
        self.worker_config = config
        self.stopping = False
        self._context = multiprocessing.get_context("spawn")

    def _spawn(self, slot: int) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(self.worker_config, child, self.log_level, self.count),
            name=f"gateway-worker-{slot}", daemon=False)
        process.start()
        child.close()
        worker = _Worker(process, parent, time.monotonic())
        self.workers[slot] = worker

        def on_message() -> None:
            try:
                kind, _ = worker.conn.recv()
            except (EOFError, OSError):
                asyncio.get_running_loop().remove_reader(worker.conn.fileno())
                return
            if kind == "ready":
                worker.ready = True
                log.info("worker %d ready (pid %s)", slot, process.pid)

        asyncio.get_running_loop().add_reader(parent.fileno(), on_message)
        log.info("worker %d started (pid %s)", slot, process.pid)

    def readiness(self) -> str | None:
        """Why the proxy cannot serve yet, or None when every worker is up."""
        if self.stopping:
            return "shutting down"
        ready = sum(1 for w in self.workers
                    if w is not None and w.ready and w.process.is_alive())
        return None if ready == self.count else f"{ready} of {self.count} workers ready"

    def process_ids(self) -> dict[str, int]:
        """This process and its live workers, by name (for process_* in /metrics)."""
        found = {"supervisor": os.getpid()}
        for slot, worker in enumerate(self.workers):
            if worker is not None and worker.process.pid is not None \
                    and worker.process.is_alive():
                found[f"worker-{slot}"] = worker.process.pid
        return found

    async def _apply(self, new: Config) -> None:
        self.config = new
        self.worker_config = replace(new, redis=self.worker_config.redis,
                                     master_key=self.worker_config.master_key)
        for worker in self.workers:
            if worker is not None and worker.process.is_alive():
                with contextlib.suppress(OSError):
                    worker.conn.send(("reload", self.worker_config))

    async def _monitor(self) -> None:
        from prometheus_client import multiprocess

        while not self.stopping:
            for slot, worker in enumerate(self.workers):
                if worker is None or worker.process.is_alive() or self.stopping:
                    continue
                log.warning("worker %d (pid %s) exited with %s; starting another", slot,
                            worker.process.pid, worker.process.exitcode)
                multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                    worker.process.pid, str(metrics_dir(self.config)))
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_reader(worker.conn.fileno())
                worker.conn.close()
                self.workers[slot] = None
                if time.monotonic() - worker.started < RESTART_BACKOFF:
                    await asyncio.sleep(RESTART_BACKOFF)  # a crash loop must not spin
                if not self.stopping:
                    self._spawn(slot)
            await asyncio.sleep(MONITOR_INTERVAL)

    async def _stop_workers(self) -> None:
        self.stopping = True
        alive = [w for w in self.workers if w is not None and w.process.is_alive()]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid or 0, signal.SIGTERM)
        deadline = (time.monotonic() + self.config.shutdown.delay
                    + self.config.listen.drain_timeout + STOP_GRACE)
        for worker in alive:
            await asyncio.to_thread(worker.process.join, max(deadline - time.monotonic(), 0.1))
            if worker.process.is_alive():
                log.error("worker pid %s did not stop in time; killing it", worker.process.pid)
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, 5)
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(worker.conn.fileno())
            worker.conn.close()

    async def run(self) -> None:
        from gateway.admin.app import create_admin_app, create_status_app
        from gateway.demo import ensure_demo_key, start_demo_upstreams
        from gateway.keys.secrets import SecretBox, load_master_key
        from gateway.keys.store import KeyStore
        from gateway.reload import ConfigReloader
        from gateway.server import check_master_key, migrate_layout, start_status_listener
        from gateway.store.client import open_redis, set_process_role
        from gateway.store.watch import StoreWatch

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_stop() -> None:
            # At once, not when the main task wakes: workers that got the same signal (sent to
            # the process group) exit now, and must not be restarted.
            self.stopping = True
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_stop)
        async with AsyncExitStack() as stack:
            set_process_role("supervisor")
            redis, redis_url = await stack.enter_async_context(open_redis(self.config))
            store = KeyStore(redis, confirm_replicas=self.config.redis.replicas_to_confirm,
                             confirm_timeout=self.config.redis.timeout / 2)
            await migrate_layout(store)
            watch = StoreWatch(redis, self.config.redis.timeout, self.config.redis.idle_timeout,
                               confirm_replicas=self.config.redis.replicas_to_confirm,
                               on_confirm=store.confirm)
            await watch.check()  # says at once what is wrong with the store, if anything
            watch.start()
            stack.push_async_callback(watch.stop)
            master_key = load_master_key(self.config, create=True)  # see server._secret_box
            await check_master_key(master_key, store)
            # Workers join the store this process opened (and own no embedded server), and
            # get the master key however this process found it.
            self.worker_config = replace(
                self.config, redis=replace(self.config.redis, url=redis_url),
                master_key=master_key)
            if self.demo:
                for runner in await start_demo_upstreams(self.config):
                    stack.push_async_callback(runner.cleanup)
                await ensure_demo_key(store, self.config)

            reloader = ConfigReloader(lambda: self.config, self._apply, self.env)
            loop.add_signal_handler(signal.SIGHUP,
                                    lambda: asyncio.ensure_future(reloader.reload()))
            admin_runner = web.AppRunner(
                create_admin_app(store, lambda: self.config, reloader,
                                 metrics_dir=metrics_dir(self.config),
                                 readiness=self.readiness,
                                 secret_box=SecretBox(master_key) if master_key else None,
                                 proxy_port=self.config.listen.port or None,
                                 store_watch=watch, processes=self.process_ids),
                access_log=None)
            await admin_runner.setup()
            stack.push_async_callback(admin_runner.cleanup)
            await web.TCPSite(admin_runner, self.config.admin.host,
                              self.config.admin.port).start()
            if self.config.status is not None:
                status_runner = await start_status_listener(
                    self.config.status,
                    create_status_app(store, lambda: self.config,
                                      metrics_dir=metrics_dir(self.config),
                                      readiness=self.readiness,
                                      secret_box=SecretBox(master_key) if master_key else None,
                                      store_watch=watch, processes=self.process_ids))
                stack.push_async_callback(status_runner.cleanup)
                log.info("status listener (/healthz, /readyz, /metrics) on http://%s:%d",
                         self.config.status.host, self.config.status.port)

            for slot in range(self.count):
                self._spawn(slot)
            stack.push_async_callback(self._stop_workers)
            monitor = asyncio.ensure_future(self._monitor())
            log.info("gateway listening on %s://%s:%d with %d workers (admin on "
                     "http://%s:%d)", "https" if self.config.listen.tls else "http",
                     self.config.listen.host, self.config.listen.port,
                     self.count, self.config.admin.host, self.config.admin.port)
            await stop.wait()
            if self.config.shutdown.delay > 0:
                log.info("stopping: /readyz at 503; workers serve %.3g s more "
                         "(shutdown.delay), then drain", self.config.shutdown.delay)
            else:
                log.info("stopping: workers drain requests in flight")
            self.stopping = True
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        log.info("stopped")


def _write_metrics_to_the_directory() -> None:
    """`gateway.cli` imports prometheus-client before the metrics directory is known, so this
    process started with in-memory values, which the aggregated /metrics never shows. Series
    made from now on (the labelled ones: config reloads, store warnings) go to this process's
    file in PROMETHEUS_MULTIPROC_DIR instead, as the workers' do."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def run_supervised(config: Config, workers: int, *, env: Mapping[str, str], demo: bool,
                   log_level: str) -> None:
    _write_metrics_to_the_directory()
    uvloop.run(Supervisor(config, workers, env, demo, log_level).run())
