"""The demo behind `gateway run --demo`: upstreams standing in for the internal services
(functions, speech, vision, translate), and a demo account with an API key.

Each upstream answers every request with JSON echoing what it received (method, path, query,
headers and a SHA-256 of the body, read in a streaming way), so the quick start shows what the
gateway forwards. The demo key is created on the first start only and kept in the store; its
secret is printed that once, like any secret.
"""

from __future__ import annotations

import hashlib
import sys
import time
from datetime import UTC, datetime

from aiohttp import web

from gateway.config import Config
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore

DEMO_SERVICES = {"functions": 9101, "speech": 9102, "vision": 9103, "translate": 9104}
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


async def start_demo_upstreams(host: str = "127.0.0.1",
                               services: dict[str, int] | None = None) -> list[web.AppRunner]:
    runners = []
    for service, port in (services or DEMO_SERVICES).items():
        runner = web.AppRunner(create_demo_app(service), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
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
