"""The one place where a refused request becomes an HTTP answer (SPEC §5)."""

from __future__ import annotations

import orjson

from gateway.errors import RequestRefused

# SPEC §5: every 401 names both credential schemes the gateway accepts.
WWW_AUTHENTICATE = b'Api-Key realm="gateway", Signature realm="gateway", alg="hmac-sha256"'
RETRY_AFTER_STORE = "1"
_JSON = (b"Content-Type", b"application/json")
_NO_STORE = (b"Cache-Control", b"no-store")
# The reason phrases of the statuses the gateway answers with itself.
REASONS = {
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, b"Error")


def error_body(code: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "request_id": request_id}})


def error_reply(exc: RequestRefused,
                request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the gateway's own answer to a refused request."""
    headers = [_JSON, _NO_STORE, (b"X-Request-Id", request_id.encode("ascii"))]
    if exc.status == 401:
        headers.append((b"WWW-Authenticate", WWW_AUTHENTICATE))
    elif exc.code == "key_store_unavailable" and "Retry-After" not in exc.headers:
        headers.append((b"Retry-After", RETRY_AFTER_STORE.encode("ascii")))
    headers.extend((name.encode("latin-1"), value.encode("latin-1"))
                   for name, value in exc.headers.items())
    return exc.status, headers, error_body(exc.code, exc.message, request_id)
