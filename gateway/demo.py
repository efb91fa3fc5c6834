"""Demo upstreams standing in for the internal services (functions, speech, vision, translate).

Each answers every request with JSON echoing what it received (method, path, query, headers and a
SHA-256 of the body, read in a streaming way), so the quick start shows what the gateway forwards.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

DEMO_SERVICES = {"functions": 9101, "speech": 9102, "vision": 9103, "translate": 9104}
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
