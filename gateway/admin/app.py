"""The admin listener (SPEC §8, §9): health, readiness, the admin API and its OpenAPI document,
and the admin web page at `/ui/`: static files from `ui/` under a strict Content-Security-Policy."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web

from gateway.admin.api import (
    ADMIN_FAILURES_KEY,
    ADMIN_LOG_KEY,
    CONFIG_KEY,
    PROXY_PORT_KEY,
    RELOADER_KEY,
    SECRET_BOX_KEY,
    STORE_KEY,
    add_admin_routes,
    admin_middleware,
)
from gateway.admin.guard import AdminFailures
from gateway.admin.openapi import openapi_document
from gateway.config import Config
from gateway.keys.secrets import SecretBox, master_key_problem
from gateway.keys.store import KeyStore
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import ADMIN_AUTH_FAILURES, render
from gateway.reload import ConfigReloader
from gateway.store.watch import StoreWatch

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness_report(app: web.Application) -> tuple[int, dict[str, object]]:
    """Ready when the store answers and can take writes (a demoted master, a cluster with a
    slot uncovered, a pool that stays exhausted: not ready) and every worker is up. The store's
    risky settings are listed as warnings either way."""
    config = app[CONFIG_KEY]()
    health = await app[STORE_WATCH_KEY].check()
    address = app[STORE_KEY].redis.address
    store = {"store": address.describe() if address is not None else "unknown",
             "warnings": list(health.warnings)}
    if not health.writable:
        return 503, {"status": "unavailable",
                     "reason": f"key store unavailable: {health.reason}", **store}
    readiness = app[READINESS_KEY]
    not_ready = readiness() if readiness is not None else None
    if not_ready is None:
        # The master key opens the stored HMAC secrets (issue 17, item 9).
        not_ready = await master_key_problem(app[SECRET_BOX_KEY], app[STORE_KEY])
    if not_ready is not None:
        return 503, {"status": "unavailable", "reason": not_ready, **store}
    return 200, {"status": "ready", "config": config.source, "config_hash": config.digest,
                 "routes": len(config.routes), **store}


async def readyz(request: web.Request) -> web.Response:
    status, body = await readiness_report(request.app)
    return web.json_response(body, status=status)


async def status_readyz(request: web.Request) -> web.Response:
    """The status listener's /readyz: the verdict alone. The admin listener's body names the
    store's address, the config file's path and the causes of a failure (an address, a
    master-key problem), which are for operators, not for whoever reaches the pod IP."""
    status, body = await readiness_report(request.app)
    return web.json_response({"status": body["status"]}, status=status)


async def _check_master_key(app: web.Application) -> None:
    """Said once at start, in the log (and by every /readyz while it lasts)."""
    problem = await master_key_problem(app[SECRET_BOX_KEY], app[STORE_KEY])
    if problem is not None:
        log.error("signed requests cannot be checked: %s", problem)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = render(request.app[METRICS_DIR_KEY], request.app[PROCESSES_KEY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


UI_DIR = Path(__file__).parent / "ui"
UI_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
            ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def ui_files() -> dict[str, tuple[bytes, str]]:
    """The page's files by name, read once: only these are served, and no request path ever
    reaches the disk."""
    return {path.name: (path.read_bytes(), UI_TYPES[path.suffix])
            for path in sorted(UI_DIR.iterdir()) if path.is_file() and path.suffix in UI_TYPES}


async def ui_redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/ui/", **UI_HEADERS})


async def ui_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    found = request.app[UI_FILES_KEY].get(name)
    if found is None:
        response = web.Response(status=404, text="not found\n")
    else:
        response = web.Response(body=found[0])
        response.headers["Content-Type"] = found[1]
    response.headers.update(UI_HEADERS)
    return response


OPENAPI_KEY: web.AppKey[dict[str, object]] = web.AppKey("openapi")
METRICS_DIR_KEY: web.AppKey[Path | None] = web.AppKey("metrics_dir")
READINESS_KEY: web.AppKey[Callable[[], str | None] | None] = web.AppKey("readiness")
# Under --workers N: the supervisor's and every live worker's pid, by name, for process_*.
PROCESSES_KEY: web.AppKey[Callable[[], Mapping[str, int]] | None] = web.AppKey("processes")
STORE_WATCH_KEY: web.AppKey[StoreWatch] = web.AppKey("store_watch")
UI_FILES_KEY: web.AppKey[dict[str, tuple[bytes, str]]] = web.AppKey("ui_files")


def _probe_state(app: web.Application, store: KeyStore, config: Callable[[], Config],
                 metrics_dir: Path | None, readiness: Callable[[], str | None] | None,
                 secret_box: SecretBox | None, store_watch: StoreWatch | None,
                 processes: Callable[[], Mapping[str, int]] | None) -> None:
    """What /healthz, /readyz and /metrics read, on either listener."""
    app[STORE_KEY] = store
    # The process's own watch when it runs one; else one for /readyz's checks alone.
    if store_watch is None and store is not None:
        store_watch = StoreWatch(store.redis, config().redis.timeout,
                                 config().redis.idle_timeout)
    if store_watch is not None:
        app[STORE_WATCH_KEY] = store_watch
    app[CONFIG_KEY] = config
    app[METRICS_DIR_KEY] = metrics_dir
    app[READINESS_KEY] = readiness
    app[SECRET_BOX_KEY] = secret_box  # to create HMAC keys; None without a master key
    app[PROCESSES_KEY] = processes


@web.middleware
async def _nosniff(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def create_status_app(store: KeyStore, config: Callable[[], Config],
                      metrics_dir: Path | None = None,
                      readiness: Callable[[], str | None] | None = None,
                      secret_box: SecretBox | None = None,
                      store_watch: StoreWatch | None = None,
                      processes: Callable[[], Mapping[str, int]] | None = None
                      ) -> web.Application:
    """The status listener (issue 19): the probes and the scrape alone, without a token, as
    Kong's status_listen. Every other path is a 404; no request body is read."""
    app = web.Application(middlewares=[_nosniff], client_max_size=1024)
    _probe_state(app, store, config, metrics_dir, readiness, secret_box, store_watch,
                 processes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", status_readyz)
    app.router.add_get("/metrics", metrics)
    return app


def create_admin_app(store: KeyStore, config: Callable[[], Config],
                     reloader: ConfigReloader | None = None,
                     metrics_dir: Path | None = None,
                     readiness: Callable[[], str | None] | None = None,
                     secret_box: SecretBox | None = None,
                     proxy_port: int | None = None,
                     store_watch: StoreWatch | None = None,
                     processes: Callable[[], Mapping[str, int]] | None = None
                     ) -> web.Application:
    app = web.Application(middlewares=[admin_middleware], client_max_size=64 * 1024)
    _probe_state(app, store, config, metrics_dir, readiness, secret_box, store_watch,
                 processes)
    app[RELOADER_KEY] = reloader
    app[OPENAPI_KEY] = openapi_document()
    app[PROXY_PORT_KEY] = proxy_port  # for the page's example requests
    app[UI_FILES_KEY] = ui_files()
    # Every admin request is logged, whatever log.access_log says: they are few, and each one
    # matters (issue 17, item 5).
    admin_log = AccessLog(enabled=True)
    app[ADMIN_LOG_KEY] = admin_log
    app[ADMIN_FAILURES_KEY] = AdminFailures()
    for reason in ("missing", "invalid"):
        ADMIN_AUTH_FAILURES.labels(reason)  # exported at 0 from the start

    async def flush_log(app: web.Application) -> None:
        admin_log.flush()

    app.on_cleanup.append(flush_log)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/openapi.json", openapi)
    add_admin_routes(app)
    app.router.add_get("/ui", ui_redirect)
    app.router.add_get("/ui/", ui_file)
    app.router.add_get("/ui/{name}", ui_file)
    app.on_startup.append(_check_master_key)
    if not config().admin.all_tokens():
        log.warning("no admin token configured (GATEWAY_ADMIN_TOKEN or admin.tokens): "
                    "the admin API is off")
    return app
