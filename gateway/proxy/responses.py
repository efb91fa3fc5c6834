"""The one place where a refused request becomes an HTTP response (SPEC §5)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.errors import RequestRefused

# SPEC §5: every 401 names both credential schemes the gateway accepts.
WWW_AUTHENTICATE = 'Api-Key realm="gateway", Signature realm="gateway", alg="hmac-sha256"'
RETRY_AFTER_STORE = "1"


def error_body(code: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "request_id": request_id}})


def error_response(exc: RequestRefused, request_id: str) -> web.Response:
    headers = {"X-Request-Id": request_id, "Cache-Control": "no-store"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    elif exc.code == "key_store_unavailable":
        headers["Retry-After"] = RETRY_AFTER_STORE
    headers.update(exc.headers)
    return web.Response(
        status=exc.status,
        body=error_body(exc.code, exc.message, request_id),
        content_type="application/json",
        headers=headers,
    )
