"""Admin listener application: `/healthz` and `/readyz` (SPEC §9)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from gateway.config import Config
from gateway.errors import StoreError
from gateway.store.client import Redis, store_errors

REDIS_KEY: web.AppKey[Redis] = web.AppKey("redis", Redis)
CONFIG_KEY: web.AppKey[Callable[[], Config]] = web.AppKey("config")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]()
    redis = request.app[REDIS_KEY]
    try:
        with store_errors():
            await asyncio.wait_for(redis.ping(), timeout=config.redis.timeout)
    except (StoreError, TimeoutError) as exc:
        reason = str(exc) or "key store did not answer in time"
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)
    return web.json_response({"status": "ready", "config": config.source,
                              "routes": len(config.routes)})


def create_admin_app(redis: Redis, config: Callable[[], Config]) -> web.Application:
    app = web.Application()
    app[REDIS_KEY] = redis
    app[CONFIG_KEY] = config
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
