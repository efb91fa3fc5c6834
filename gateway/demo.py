"""The demo behind `gateway run --demo`: upstreams standing in for the internal services
(functions, speech, vision, translate), a demo account with an API key, and an admin token for
the web page.

The demo upstreams follow the config: one listens wherever a route points at a loopback address
(`http://127.0.0.1:9103`, as config/gateway.example.yaml's routes do), so moving a route in the
file moves its demo upstream, and what the file says is where requests go.

Each upstream answers every request with JSON echoing what it received (method, path, query,
headers and a SHA-256 of the body, read in a streaming way), so the quick start shows what the
gateway forwards. The demo key is created on the first start only and kept in the store; its
secret is printed that once, like any secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from gateway.config import Config
from gateway.datadir import private_dir
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret

# The demo key holds every scope of the routes: it must not outlive a try-out (issue 17, item 8).
DEMO_KEY_LIFETIME = 30 * 86400.0
SERVICE_KEY = web.AppKey("service", str)


async def echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    path, _, query = request.raw_path.partition("?")
    return web.json_response({
        "service": request.app[SERVICE_KEY],
        "method": request.method,
        "path": path,  # as it arrived on the wire, not decoded
        "query": query,
        "headers": _headers(request),
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
    })


def _headers(request: web.Request) -> dict[str, str]:
    # Repeated headers are joined, as RFC 9110 allows, so none is hidden from the echo.
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def create_demo_app(service: str) -> web.Application:
    app = web.Application()
    app[SERVICE_KEY] = service
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def demo_upstreams(config: Config) -> dict[tuple[str, int], str]:
    """Where the demo upstreams listen, (host, port) -> the service name they echo: every
    loopback http address (with a port) a route points at, named after the first such route."""
    found: dict[tuple[str, int], str] = {}
    for route in config.routes:
        parts = urlsplit(route.upstream)
        if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and parts.port:
            found.setdefault((parts.hostname, parts.port), route.name)
    return found


async def start_demo_upstreams(config: Config) -> list[web.AppRunner]:
    upstreams = demo_upstreams(config)
    if not upstreams:
        log.warning("--demo: no route points at a loopback address (such as "
                    "http://127.0.0.1:9103), so no demo upstream is served")
    runners = []
    try:
        for (host, port), service in upstreams.items():
            runner = web.AppRunner(create_demo_app(service), access_log=None)
            runners.append(runner)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise OSError(f"the demo upstream of route {service!r} cannot listen on "
                              f"{host}:{port} ({exc.strerror}); is another `gateway run --demo` "
                              "running?") from None
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners


async def ensure_demo_key(store: KeyStore, config: Config) -> None:
    """Create the demo account and key on the first start; say where it is on later ones."""
    key_id = await store.demo_key_id()
    existing = await store.get_key(key_id) if key_id is not None else None
    expired = existing is not None and existing.expires_at is not None \
        and existing.expires_at <= time.time()
    if existing is not None and not expired:
        _say(f"Demo API key {existing.id} was created on the first start; its secret was shown "
             "then and is not stored. For a new one:\n"
             f"  gateway keys create --account {existing.account_id} --scope 'yc.*'")
        return
    service = KeyService(store, default_scopes=config.keys.default_scopes)
    if existing is not None:  # expired: a new key on the same account
        account = await service.get_account(existing.account_id)
    else:
        account = await service.create_account("demo")
    scopes = sorted({scope for route in config.routes for scope in route.scopes})
    expires_at = time.time() + DEMO_KEY_LIFETIME
    key, secret = await service.create_key(account_id=account.id, scopes=scopes,
                                           expires_at=expires_at,
                                           description="created by `gateway run --demo`")
    await store.set_demo_key_id(key.id)
    route = next((r for r in config.routes if r.prefix.startswith("/vision")),
                 config.routes[0] if config.routes else None)
    path = (route.prefix.rstrip("/") if route else "") + "/any/path?x=1"
    _say(f"Created demo account {account.id} and API key {key.id} "
         f"(scopes: {' '.join(scopes) or 'none'}; expires "
         f"{datetime.fromtimestamp(expires_at, UTC):%Y-%m-%d %H:%M} UTC).\n"
         "Its secret is shown now and never again:\n\n"
         f"  curl -H 'Authorization: Api-Key {secret}' "
         f"'http://localhost:{config.listen.port}{path}'\n")


def _say(text: str) -> None:
    # The operator's terminal, not the log: a secret is shown once and never logged.
    print(text, file=sys.stdout, flush=True)


def demo_admin_token(config: Config, *, show: bool) -> str:
    """The admin token of `--demo` when the config names none: the data directory's
    admin.token, made (0600) on the first start, so the web page can be opened at once.

    Said on the operator's terminal, never in the log: on the first start the token itself with
    the page's address, but only when `show` (stdout is a terminal: anywhere else stdout is a
    log stream, SPEC §2, and the file keeps the token anyway); on later starts where it is."""
    path = Path(config.data_dir) / ADMIN_TOKEN_FILE
    token, created = _read_or_create_token(path)
    page = f"http://{_reachable(config.admin.host)}:{config.admin.port}/ui/"
    if created and show:
        _say(f"Admin token for the web page {page} (kept in {path}; shown now, not again):\n\n"
             f"  {token}\n")
    elif created:
        _say(f"Created an admin token for the web page {page} in {path} (not shown: stdout is "
             "not a terminal).")
    else:
        _say(f"The web page {page} takes the admin token in {path}.")
    return token


def _read_or_create_token(path: Path) -> tuple[str, bool]:
    private_dir(path.parent)
    if not path.exists():
        # Written aside, then linked into place: the file appears whole or not at all, and
        # of two starts at once the second one reads the first one's token.
        fd, aside = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
                return path.read_text(encoding="ascii").strip(), True
        finally:
            os.unlink(aside)
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise OSError(f"{path} is empty: remove it, and a new admin token is made")
    return token, False


def _reachable(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # every interface: loopback is one of them
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
