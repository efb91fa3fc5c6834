"""The gateway's exceptions, in one small tree.

    GatewayError
    ├── ConfigError            a config file or override is invalid (names file, field, reason)
    ├── StoreError             the key store (Redis) failed
    │   └── StoreUnavailable   ...because it could not be reached in time
    ├── RequestRefused         a request the gateway answers itself (carries a SPEC §5 code)
    ├── ClientGone             the client went away (or its body broke) while being read
    │   └── ClientTooSlow      ...or sent nothing of it for too long
    └── ServiceError           a management operation was refused (CLI, admin API, web page)
        ├── NotFound           no account or key with that id
        ├── Conflict           the operation contradicts the current state
        └── InvalidRequest     the operation's input is wrong (names the field)

Third-party errors (redis, httptools, sockets) are translated into this tree at the boundary
where they happen. `RequestRefused` is turned into an HTTP response in exactly one place:
`gateway.proxy.responses.error_reply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# SPEC §5: every code the gateway answers with, and its status.
STATUS_BY_CODE: Mapping[str, int] = {
    "bad_request": 400,
    "missing_credentials": 401,
    "invalid_credentials": 401,
    "expired_key": 401,
    "invalid_signature": 401,
    "signature_expired": 401,
    "replayed_request": 401,
    "insufficient_scope": 403,
    "account_disabled": 403,
    "api_access_denied": 403,
    "no_route": 404,
    "request_timeout": 408,
    "body_too_large": 413,
    "uri_too_long": 414,
    "headers_too_large": 431,
    "too_many_requests": 429,
    "rate_limited": 429,
    "quota_exhausted": 429,
    "internal_error": 500,
    "upstream_unavailable": 502,
    "key_store_unavailable": 503,
    "server_busy": 503,
    "upstream_timeout": 504,
}


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    path: str  # field path such as "routes[0].upstream"; "" for the whole document
    reason: str


class ConfigError(GatewayError):
    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {p.path}: {p.reason}" if p.path else f"{source}: {p.reason}"
                 for p in problems]
        super().__init__("\n".join(lines))


class StoreError(GatewayError):
    """The key store answered with an error, or not at all."""


class StoreUnavailable(StoreError):
    """The key store could not be reached (connection refused, timed out, went away)."""


class PoolExhausted(StoreUnavailable):
    """Every connection of this process's pool stayed busy for the whole `redis.timeout`: the
    store may be healthy, this process asks more of it than its pool allows."""

    pool_exhausted = True


class RequestRefused(GatewayError):
    """A request the gateway answers itself, with a SPEC §5 code."""

    def __init__(self, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS_BY_CODE[code]
        self.headers = headers or {}
        # For the access log: the key a refusal was about, once it was found (X-Auth-* names).
        self.identity: Mapping[str, str] | None = None


class ClientGone(GatewayError):
    """The client went away (or sent a body the parser refused) while its body was read."""


class ClientTooSlow(ClientGone):
    """The client sent nothing of its request body for too long."""


class ServiceError(GatewayError):
    """A management operation that cannot be done; the message is for the operator."""


class NotFound(ServiceError):
    pass


class Conflict(ServiceError):
    pass


class InvalidRequest(ServiceError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
