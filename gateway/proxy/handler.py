"""The proxy listener's request handler: target -> route -> forward, errors answered as JSON.

It runs on aiohttp's low-level server (no router, no middleware chain): the gateway does its own
routing, and every layer skipped is time saved on each proxied request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.auth.authenticator import Authenticator
from gateway.config import Config
from gateway.errors import RequestRefused
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import (
    IN_FLIGHT,
    REQUEST_DURATION,
    REQUESTS,
    UPSTREAM_DURATION,
    method_label,
)
from gateway.proxy.forward import UpstreamPool, UpstreamRequest, forward
from gateway.proxy.headers import is_trusted, request_id_from, upstream_request_headers
from gateway.proxy.responses import error_response
from gateway.proxy.routing import RouteTable, parse_target, upstream_origin

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499
MAX_SERIES = 10_000


@dataclass(frozen=True, slots=True)
class ProxyState:
    """Everything a request reads from the config, built once per config load.

    A request takes the state current when it starts and keeps it to the end, so a reload never
    changes the rules under a request in flight.
    """

    config: Config
    routes: RouteTable
    origins: dict[str, str]
    timeouts: dict[str, aiohttp.ClientTimeout]

    @classmethod
    def from_config(cls, config: Config) -> ProxyState:
        return cls(config=config, routes=RouteTable(config.routes),
                   origins={r.name: upstream_origin(r.upstream) for r in config.routes},
                   timeouts={r.name: aiohttp.ClientTimeout(total=None,
                                                           connect=r.connect_timeout,
                                                           sock_read=r.timeout)
                             for r in config.routes})


class ProxyHandler:
    def __init__(self, state: ProxyState, pool: UpstreamPool, authenticator: Authenticator,
                 access_log: AccessLog | None = None) -> None:
        self.state = state
        self.pool = pool
        self.authenticator = authenticator
        self.access_log = access_log or AccessLog(enabled=False)
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def reload(self, config: Config) -> None:
        """Requests already running keep the state they took; new ones get this one."""
        self.state = ProxyState.from_config(config)
        self.authenticator.hmac_config = config.hmac
        self.authenticator.cache.config = config.keys
        self.access_log.enabled = config.log.access_log

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        state = self.state
        started = time.perf_counter()
        IN_FLIGHT.inc()
        request_id = request_id_from(request.headers.get("X-Request-Id"))
        route_name = "-"
        identity: dict[str, str] | None = None
        outcome = "ok"
        upstream_seconds: float | None = None
        response: web.StreamResponse | None = None
        try:
            try:
                target = parse_target(request.raw_path)
                match = state.routes.match(target)
                route = match.route
                route_name = route.name
                body = None
                if not route.public:
                    authenticated = await self.authenticator.authenticate(request, route)
                    identity, body = authenticated.identity, authenticated.body
                peer = request.remote
                trusted = state.config.listen.trusted_proxies
                headers = upstream_request_headers(
                    request.headers,
                    peer=peer,
                    trusted_peer=bool(trusted) and is_trusted(peer, trusted),
                    scheme=request.scheme,
                    request_id=request_id,
                    identity=identity,
                )
                url_text = state.origins[route.name] + match.upstream_path
                if target.query:
                    url_text += "?" + target.query
                upstream = UpstreamRequest(route=route, method=request.method,
                                           url=URL(url_text, encoded=True), headers=headers,
                                           request_id=request_id,
                                           timeout=state.timeouts[route.name], body=body)
                upstream_started = time.perf_counter()
                try:
                    response = await forward(self.pool, request, upstream)
                finally:
                    upstream_seconds = time.perf_counter() - upstream_started
            except RequestRefused as refused:
                outcome = refused.code
                response = error_response(refused, request_id)
            return response
        finally:
            IN_FLIGHT.dec()
            self._account(request, request_id, route_name, response, outcome, identity,
                          time.perf_counter() - started, upstream_seconds)

    def _account(self, request: web.BaseRequest, request_id: str, route_name: str,
                 response: web.StreamResponse | None, outcome: str,
                 identity: dict[str, str] | None, seconds: float,
                 upstream_seconds: float | None) -> None:
        # 499, as nginx says it: the client went away before it could be answered.
        status = response.status if response is not None else CLIENT_CLOSED
        if response is None:
            outcome = "client_closed"
        counters = self._series.get((route_name, request.method, status))
        if counters is None:
            # Looking labelled children up costs more than using them: keep them (bounded:
            # routes x methods x statuses; the method label folds unknown methods together).
            counters = (REQUESTS.labels(route_name, method_label(request.method), str(status)),
                        REQUEST_DURATION.labels(route_name),
                        UPSTREAM_DURATION.labels(route_name))
            if len(self._series) < MAX_SERIES:
                self._series[(route_name, request.method, status)] = counters
        counters[0].inc()
        counters[1].observe(seconds)
        if upstream_seconds is not None:
            counters[2].observe(upstream_seconds)
        if not self.access_log.enabled:
            return
        if response is None:
            sent = 0
        elif response.prepared:
            sent = response.body_length
        else:
            sent = len(getattr(response, "body", b"") or b"")
        identity = identity or {}
        self.access_log.write({
            "request_id": request_id,
            "method": request.method,
            "path": request.raw_path.partition("?")[0],
            "route": route_name,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "upstream_ms": round(upstream_seconds * 1000, 3)
            if upstream_seconds is not None else None,
            "bytes_sent": sent,
            "bytes_received": request.content_length,
            "client": request.remote,
            "auth_method": identity.get("X-Auth-Method"),
            "key_id": identity.get("X-Auth-Key-Id"),
            "account_id": identity.get("X-Auth-Account-Id"),
            "outcome": outcome,
        })
