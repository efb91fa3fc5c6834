"""The admin HTTP API under `/admin/` (SPEC §8): JSON in and out, bearer-token auth, the same
lifecycle service as the CLI. Described by `/admin/openapi.json` (see `openapi.py`).

Errors: `{"error": {"code", "message", "request_id"}}` with 400 `bad_request` (not JSON),
401 `unauthorized`, 404 `not_found` / `admin_api_disabled`, 405 `method_not_allowed`,
409 `conflict`, 422 `invalid_request` (the message names the field), 429 `too_many_requests`
(repeated failed token checks from one address: gateway/admin/guard.py), 503
`key_store_unavailable`. Every number is ASCII digits (else 422).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.admin.guard import AdminFailures
from gateway.auth.throttle import retry_after_header
from gateway.config import AdminToken, Config, parse_duration
from gateway.errors import Conflict, InvalidRequest, NotFound, StoreError
from gateway.keys import importing
from gateway.keys.limits import LimitChanges
from gateway.keys.model import API_KEY, UNSET, Unset
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.limits import readout
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import ADMIN_AUTH_FAILURES
from gateway.proxy.headers import request_id_from
from gateway.reload import ConfigReloader

log = logging.getLogger(__name__)

CONFIG_KEY: web.AppKey[Callable[[], Config]] = web.AppKey("config")
STORE_KEY: web.AppKey[KeyStore] = web.AppKey("store", KeyStore)
RELOADER_KEY: web.AppKey[ConfigReloader | None] = web.AppKey("reloader")
SECRET_BOX_KEY: web.AppKey[SecretBox | None] = web.AppKey("secret_box")
PROXY_PORT_KEY: web.AppKey[int | None] = web.AppKey("proxy_port")
ACTOR: web.RequestKey[str] = web.RequestKey("actor", str)
OUTCOME: web.RequestKey[str] = web.RequestKey("outcome", str)
ADMIN_LOG_KEY: web.AppKey[AccessLog] = web.AppKey("admin_log", AccessLog)
ADMIN_FAILURES_KEY: web.AppKey[AdminFailures] = web.AppKey("admin_failures", AdminFailures)
MAX_BODY = 64 * 1024
MAX_IMPORT_BODY = 64 * 1024 * 1024  # about 300,000 keys; more through the CLI
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadBody(Exception):
    pass


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str, request_id: str,
           headers: dict[str, str] | None = None) -> web.Response:
    response = _json({"error": {"code": code, "message": message, "request_id": request_id}},
                     status)
    response.headers["X-Request-Id"] = request_id
    response.headers.update(headers or {})
    return response


def token_label(authorization: str | None, tokens: tuple[AdminToken, ...]) -> str | None:
    """The label of the admin token presented as `Bearer <token>`, else None. Every configured
    token is compared, in constant time, whatever matched first."""
    if not authorization:
        return None
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    digest = hashlib.sha256(presented.strip().encode()).hexdigest()
    label = None
    for token in tokens:
        if hmac.compare_digest(digest, token.sha256) and label is None:
            label = token.label
    return label


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer of the admin listener: `X-Content-Type-Options: nosniff`; and every request
    but the probes (/healthz, /readyz, /metrics) a JSON line on stdout with `"log": "admin"`
    (issue 17, item 5): never the token, a body or the query."""
    started = time.perf_counter()
    request_id = request_id_from(request.headers.get("X-Request-Id"))
    response = await _answer(request, handler, request_id)
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.path in PROBES:
        return response  # health checks and scrapes, every few seconds: not logged
    request.app[ADMIN_LOG_KEY].write({
        "log": "admin",
        "request_id": request_id,
        "method": request.method,
        "path": request.path,
        "status": response.status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "client": request.remote,
        "actor": request.get(ACTOR),  # the token's label, never the token
        "user_agent": request.headers.get("User-Agent"),
        "outcome": request.get(OUTCOME) or ("ok" if response.status < 400 else "error"),
    })
    return response


async def _answer(request: web.Request, handler: Handler,
                  request_id: str) -> web.StreamResponse:
    if request.path.startswith("/admin/") and request.path != "/admin/openapi.json":
        tokens = request.app[CONFIG_KEY]().admin.all_tokens()
        if not tokens:
            return _refused(request, 404, "admin_api_disabled",
                            "the admin API is off: no admin token is configured", request_id)
        failures = request.app[ADMIN_FAILURES_KEY]
        client = request.remote or "unknown"
        wait = failures.retry_after(client)
        if wait is not None:
            return _refused(request, 429, "too_many_requests",
                            "too many failed admin token checks from this address; retry "
                            "later", request_id, {"Retry-After": retry_after_header(wait)})
        authorization = request.headers.get("Authorization")
        label = token_label(authorization, tokens)
        if label is None:
            ADMIN_AUTH_FAILURES.labels("missing" if not authorization else "invalid").inc()
            failures.record_failure(client)
            return _refused(request, 401, "unauthorized", "a valid admin token is required "
                            "(Authorization: Bearer <token>)", request_id,
                            {"WWW-Authenticate": 'Bearer realm="gateway-admin"'})
        request[ACTOR] = label
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own 404/405 for unknown paths and methods
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
        return _refused(request, exc.status, code, exc.reason, request_id)
    except _BadBody as exc:
        return _refused(request, 400, "bad_request", str(exc), request_id)
    except InvalidRequest as exc:
        return _refused(request, 422, "invalid_request", str(exc), request_id)
    except NotFound as exc:
        return _refused(request, 404, "not_found", str(exc), request_id)
    except Conflict as exc:
        return _refused(request, 409, "conflict", str(exc), request_id)
    except StoreError as exc:
        return _refused(request, 503, "key_store_unavailable", str(exc), request_id,
                        {"Retry-After": "1"})
    response.headers["X-Request-Id"] = request_id
    return response


def _refused(request: web.Request, status: int, code: str, message: str, request_id: str,
             headers: dict[str, str] | None = None) -> web.Response:
    request[OUTCOME] = code
    return _error(status, code, message, request_id, headers)


def _with_secret(data: dict[str, Any], status: int = 200) -> web.Response:
    """An answer carrying a secret: never kept by a cache or a browser's history."""
    response = _json(data, status)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- input ---------------------------------------------------------------------------------------

async def _body(request: web.Request, allowed: set[str], *,
                immutable: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise _BadBody(f"the body is larger than {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise _BadBody("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _BadBody("the body must be a JSON object")
    for name in sorted(body):
        if name in immutable:
            raise InvalidRequest(name, "cannot be changed; only "
                                 f"{' and '.join(sorted(allowed))} can")
        if name not in allowed:
            raise InvalidRequest(name, "unknown field")
    return body


def _typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...],
           what: str) -> Any:
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(name, f"must be {what}")
    return value


def _time(value: Any, name: str) -> float:
    if not isinstance(value, str):
        raise InvalidRequest(name, "must be an RFC 3339 time such as 2027-01-31T00:00:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(name, "must be an RFC 3339 time such as 2027-01-31T00:00:00Z"
                             ) from None
    if moment.tzinfo is None:
        raise InvalidRequest(name, "must carry a time zone (such as Z)")
    return moment.timestamp()


def _duration(value: Any, name: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise InvalidRequest(name, "must be a duration such as 30d, 12h or 90s") from None


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    # ASCII digits only: str.isdigit() takes "²" too, which int() then refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise InvalidRequest(name, "must be a whole number")
    return int(text)


def _service(request: web.Request) -> KeyService:
    config = request.app[CONFIG_KEY]()
    return KeyService(request.app[STORE_KEY], default_scopes=config.keys.default_scopes,
                      actor=request[ACTOR], secret_box=request.app[SECRET_BOX_KEY])


def _page(items: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    return _json({"items": items, "next_cursor": next_cursor})


# -- accounts ------------------------------------------------------------------------------------

async def list_accounts(request: web.Request) -> web.Response:
    page = await _service(request).list_accounts(cursor=request.query.get("cursor"),
                                                 limit=_query_int(request, "limit", 100))
    return _page(page.items, page.next_cursor)


async def create_account(request: web.Request) -> web.Response:
    body = await _body(request, {"name", "enabled", "api_access"})
    if "name" not in body:
        raise InvalidRequest("name", "is required")
    service = _service(request)
    account = await service.create_account(
        _typed(body, "name", str, "a string"),
        api_access=_typed(body, "api_access", bool, "true or false")
        if "api_access" in body else True,
        enabled=_typed(body, "enabled", bool, "true or false") if "enabled" in body else True,
    )
    return _json(await service.account_view(account), 201)


async def get_account(request: web.Request) -> web.Response:
    service = _service(request)
    account = await service.get_account(request.match_info["account_id"])
    return _json(await service.account_view(account))


async def update_account(request: web.Request) -> web.Response:
    body = await _body(request, {"enabled", "api_access", *LIMIT_FIELDS},
                       immutable={"id", "name", "created_at"})
    if not body:
        raise InvalidRequest("enabled", "give enabled, api_access, rate, burst and/or quota")
    service = _service(request)
    account = await service.update_account(
        request.match_info["account_id"],
        enabled=_typed(body, "enabled", bool, "true or false") if "enabled" in body else None,
        api_access=_typed(body, "api_access", bool, "true or false")
        if "api_access" in body else None,
        limits=_limits(body),
    )
    return _json(await service.account_view(account))


async def delete_account(request: web.Request) -> web.Response:
    delete_keys = request.query.get("delete_keys", "false")
    if delete_keys not in ("true", "false"):
        raise InvalidRequest("delete_keys", "must be true or false")
    deleted = await _service(request).delete_account(request.match_info["account_id"],
                                                     delete_keys=delete_keys == "true")
    return _json({"deleted_account": request.match_info["account_id"],
                  "deleted_keys": deleted})


# -- keys ----------------------------------------------------------------------------------------

async def list_keys(request: web.Request) -> web.Response:
    page = await _service(request).list_keys(account_id=request.query.get("account_id"),
                                             cursor=request.query.get("cursor"),
                                             limit=_query_int(request, "limit", 100))
    return _page(page.items, page.next_cursor)


LIMIT_FIELDS = frozenset({"rate", "burst", "quota"})


def _limits(body: dict[str, Any]) -> LimitChanges | None:
    """rate ("100/s"), burst (a number) and quota ("10000/month") from a body; null removes
    one (SPEC §11). None when the body names none."""
    if not LIMIT_FIELDS & body.keys():
        return None
    fields: dict[str, Any] = {}
    for name, kind, what in (("rate", str, "a rate such as 100/s, or null"),
                             ("burst", int, "a whole number, or null"),
                             ("quota", str, "a quota such as 10000/month, or null")):
        if name in body:
            value = body[name]
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise InvalidRequest(name, f"must be {what}")
            fields[name] = value
    return LimitChanges(**fields)


async def create_key(request: web.Request) -> web.Response:
    body = await _body(request, {"account_id", "type", "scopes", "expires_at", "expires_in",
                                 "description", *LIMIT_FIELDS})
    if "account_id" not in body:
        raise InvalidRequest("account_id", "is required")
    if "expires_at" in body and "expires_in" in body:
        raise InvalidRequest("expires_in", "give expires_at or expires_in, not both")
    expires_at = None
    if body.get("expires_at") is not None:
        expires_at = _time(body["expires_at"], "expires_at")
    elif "expires_in" in body:
        seconds = _duration(body["expires_in"], "expires_in")
        if seconds <= 0:
            raise InvalidRequest("expires_in", "must be greater than zero")
        expires_at = datetime.now(UTC).timestamp() + seconds
    scopes = _typed(body, "scopes", list, "a list of scope names") if "scopes" in body else []
    if not all(isinstance(scope, str) for scope in scopes):
        raise InvalidRequest("scopes", "must be a list of scope names")
    service = _service(request)
    key, secret = await service.create_key(
        account_id=_typed(body, "account_id", str, "a string"),
        key_type=_typed(body, "type", str, "a string") if "type" in body else API_KEY,
        scopes=scopes, expires_at=expires_at,
        description=_typed(body, "description", str, "a string")
        if "description" in body else "", limits=_limits(body))
    return _with_secret({**key.public(), "secret": secret}, 201)


async def import_keys(request: web.Request) -> web.Response:
    """The body is JSON lines, as for `gateway keys import`; every line is checked before
    anything is written."""
    raw = await request.content.read(MAX_IMPORT_BODY + 1)
    if len(raw) > MAX_IMPORT_BODY:
        raise _BadBody(f"the body is larger than {MAX_IMPORT_BODY} bytes: split the file, or "
                       "use `gateway keys import`")
    service = _service(request)
    try:
        items = importing.parse_lines(raw.splitlines(), now=service.clock(),
                                      default_scopes=service.default_scopes)
    except importing.BadImport as exc:
        request[OUTCOME] = "invalid_request"
        request_id = request_id_from(request.headers.get("X-Request-Id"))
        response = _json({"error": {"code": "invalid_request", "message": str(exc),
                                    "request_id": request_id, "lines": exc.problems}}, 422)
        response.headers["X-Request-Id"] = request_id
        return response
    report = await importing.import_keys(service.store, items, clock=service.clock,
                                         actor=service.actor)
    note = importing.foreign_note(items, request.app[CONFIG_KEY]().keys.accept_imported)
    return _json({**report.public(), **({"note": note} if note else {})})


async def get_key(request: web.Request) -> web.Response:
    service = _service(request)
    return _json(await service.key_view(await service.get_key(request.match_info["key_id"])))


async def update_key(request: web.Request) -> web.Response:
    body = await _body(request, {"expires_at", "description", *LIMIT_FIELDS},
                       immutable={"id", "type", "account_id", "scopes", "secret", "created_at",
                                  "last_used_at", "masked_secret",
                                  "previous_secret_valid_until"})
    if not body:
        raise InvalidRequest("expires_at", "give expires_at, description, rate, burst and/or "
                                           "quota")
    expires_at: float | Unset | None = UNSET
    if "expires_at" in body:
        expires_at = None if body["expires_at"] is None else _time(body["expires_at"],
                                                                   "expires_at")
    description = (_typed(body, "description", str, "a string")
                   if "description" in body else UNSET)
    service = _service(request)
    key = await service.update_key(request.match_info["key_id"], expires_at=expires_at,
                                   description=description, limits=_limits(body))
    return _json(await service.key_view(key))


async def key_usage(request: web.Request) -> web.Response:
    """Requests and refusals per minute (SPEC §11): `days` (1-7, default 1) UTC days back,
    minutes without requests left out; `step=hour` sums them per hour."""
    days = _query_int(request, "days", 1)
    if not 1 <= days <= readout.USAGE_DAYS:
        raise InvalidRequest("days", f"must be between 1 and {readout.USAGE_DAYS}")
    step = request.query.get("step", "minute")
    if step not in ("minute", "hour"):
        raise InvalidRequest("step", "must be minute or hour")
    key_id = request.match_info["key_id"]
    series = await _service(request).usage(key_id, days=days)
    return _json({"key_id": key_id, "step": step,
                  "usage": series if step == "minute" else readout.by_hour(series)})


async def delete_key(request: web.Request) -> web.Response:
    deleted = await _service(request).delete_keys([request.match_info["key_id"]])
    return _json({"deleted": [key.id for key in deleted]})


async def delete_keys(request: web.Request) -> web.Response:
    body = await _body(request, {"ids"})
    ids = _typed(body, "ids", list, "a list of key ids") if "ids" in body else None
    if ids is None or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest("ids", "must be a list of key ids")
    deleted = await _service(request).delete_keys(ids)
    return _json({"deleted": [key.id for key in deleted]})


async def reissue_key(request: web.Request) -> web.Response:
    body = await _body(request, {"grace"})
    grace = _duration(body["grace"], "grace") if "grace" in body else 0.0
    service = _service(request)
    key, secret = await service.reissue_key(request.match_info["key_id"], grace=grace)
    return _with_secret({**key.public(await service.last_used(key.id)), "secret": secret})


# -- audit ---------------------------------------------------------------------------------------

async def audit(request: web.Request) -> web.Response:
    since = request.query.get("since")
    page = await _service(request).audit(
        since=_time(since, "since") if since is not None else None,
        cursor=request.query.get("cursor"), limit=_query_int(request, "limit", 100))
    return _page(page.items, page.next_cursor)


# -- routes --------------------------------------------------------------------------------------

async def list_routes(request: web.Request) -> web.Response:
    """The configured routes and their scopes (to suggest scopes for new keys), and the port the
    proxy listens on (to show ready-made example requests)."""
    config = request.app[CONFIG_KEY]()
    items = [{"name": route.name, "prefix": route.prefix, "scopes": list(route.scopes),
              "public": route.public, "auth": list(route.auth)} for route in config.routes]
    return _json({"items": items, "proxy_port": request.app.get(PROXY_PORT_KEY)})


# -- operations ----------------------------------------------------------------------------------

async def reload_config(request: web.Request) -> web.Response:
    reloader = request.app[RELOADER_KEY]
    if reloader is None:
        raise web.HTTPNotFound(reason="this process does not reload its config")
    result = await reloader.reload()
    if not result.ok:
        request_id = request_id_from(request.headers.get("X-Request-Id"))
        return _error(422, "invalid_config", result.message, request_id)
    return _json({"status": "reloaded", "config_hash": result.digest,
                  "message": result.message})


def add_admin_routes(app: web.Application) -> None:
    add = app.router.add_route
    add("GET", "/admin/accounts", list_accounts)
    add("POST", "/admin/accounts", create_account)
    add("GET", "/admin/accounts/{account_id}", get_account)
    add("PATCH", "/admin/accounts/{account_id}", update_account)
    add("DELETE", "/admin/accounts/{account_id}", delete_account)
    add("GET", "/admin/keys", list_keys)
    add("POST", "/admin/keys", create_key)
    add("POST", "/admin/keys/delete", delete_keys)
    add("POST", "/admin/keys/import", import_keys)
    add("GET", "/admin/keys/{key_id}", get_key)
    add("PATCH", "/admin/keys/{key_id}", update_key)
    add("DELETE", "/admin/keys/{key_id}", delete_key)
    add("POST", "/admin/keys/{key_id}/reissue", reissue_key)
    add("GET", "/admin/keys/{key_id}/usage", key_usage)
    add("GET", "/admin/audit", audit)
    add("GET", "/admin/routes", list_routes)
    add("POST", "/admin/reload", reload_config)
