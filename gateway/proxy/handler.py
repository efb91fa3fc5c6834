"""The proxy listener's request handler: target -> route -> forward, errors answered as JSON.

It runs on the gateway's own listener (gateway.proxy.listener): no router, no middleware chain,
and every layer skipped is time saved on each proxied request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.auth.authenticator import Authenticated, Authenticator
from gateway.auth.locations import header_names, query_names, without_parameters
from gateway.auth.throttle import COUNTED_CODES, FailureThrottle, client_address, refusal
from gateway.config import Config, IPNetwork, RouteConfig
from gateway.errors import RequestRefused
from gateway.limits.applied import applied_limits, limit_settings
from gateway.limits.leases import Decision
from gateway.limits.sync import LimitSync
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import (
    LIMIT_REFUSALS,
    REQUEST_DURATION,
    REQUESTS,
    UPSTREAM_DURATION,
    method_label,
)
from gateway.observability.tally import TALLY
from gateway.peers import is_trusted
from gateway.proxy.forward import UpstreamRequest, forward
from gateway.proxy.headers import (
    DROP_INBOUND,
    request_id_from,
    untrusted_drop,
    upstream_request_fields,
)
from gateway.proxy.listener import Exchange
from gateway.proxy.routing import RouteTable
from gateway.proxy.tls import CLIENT_SUBJECT_HEADER, UpstreamTls
from gateway.proxy.upstream import Origin, UpstreamPool

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499
LIMIT_MESSAGES = {
    "rate_limited": "this key is over its rate limit: slow down and retry after Retry-After",
    "quota_exhausted": "this key's quota is used up until it refills (Retry-After)",
    "key_store_unavailable": "this key's quota cannot be checked while the key store is "
                             "unavailable; retry later",
}


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    origin: Origin
    host: str  # the Host header value


def upstream_address(route: RouteConfig) -> UpstreamAddress:
    parts = urlsplit(route.upstream)
    tls = UpstreamTls(route.ca_file, route.tls_verify) if parts.scheme == "https" else None
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    shown = f"[{host}]" if ":" in host else host
    return UpstreamAddress(origin=(host, port, tls),
                           host=shown if parts.port is None else f"{shown}:{port}")


@dataclass(frozen=True, slots=True)
class ProxyState:
    """Everything a request reads from the config, built once per config load.

    A request takes the state current when it starts and keeps it to the end, so a reload never
    changes the rules under a request in flight.
    """

    config: Config
    routes: RouteTable
    upstreams: dict[str, UpstreamAddress]
    drop_untrusted: frozenset[str]  # header names removed from an untrusted peer's request
    # Routes that read a key from a named header or a query parameter (auth/locations.py):
    # those go too, from every peer, whatever the request carried. By route name.
    key_headers: dict[str, tuple[frozenset[str], frozenset[str]]]  # (trusted, untrusted) drops
    key_parameters: dict[str, frozenset[str]]

    @classmethod
    def from_config(cls, config: Config) -> ProxyState:
        drop_untrusted = untrusted_drop(config.listen.strip_headers)
        key_headers = {}
        key_parameters = {}
        for route in config.routes:
            if route.public:
                continue
            if names := header_names(route.key_locations):
                key_headers[route.name] = (DROP_INBOUND | names, drop_untrusted | names)
            if names := query_names(route.key_locations):
                key_parameters[route.name] = names
        return cls(config=config, routes=RouteTable(config.routes),
                   upstreams={r.name: upstream_address(r) for r in config.routes},
                   drop_untrusted=drop_untrusted, key_headers=key_headers,
                   key_parameters=key_parameters)


class ProxyHandler:
    def __init__(self, state: ProxyState, pool: UpstreamPool, authenticator: Authenticator,
                 access_log: AccessLog | None = None,
                 throttle: FailureThrottle | None = None,
                 limiter: LimitSync | None = None) -> None:
        self.state = state
        self.limiter = limiter
        self.throttle = throttle
        self.pool = pool
        self.authenticator = authenticator
        self.access_log = access_log or AccessLog(enabled=False)

    def reload(self, config: Config) -> None:
        """Requests already running keep the state they took; new ones get this one."""
        self.state = ProxyState.from_config(config)
        self.authenticator.hmac_config = config.hmac
        self.authenticator.cache.config = config.keys
        self.access_log.enabled = config.log.access_log
        if self.throttle is not None:
            self.throttle.config = config.brute_force
        if self.limiter is not None:
            self.limiter.table.settings = limit_settings(config.limits.fail_open)

    async def __call__(self, exchange: Exchange) -> None:
        state = self.state
        started = time.perf_counter()
        TALLY.in_flight += 1
        request_id = request_id_from(exchange.headers.get("X-Request-Id"))
        route_name = "-"
        identity: dict[str, str] | None = None
        outcome = "ok"
        upstream_seconds: float | None = None
        body: bytes | None = None
        limit_headers: tuple[tuple[str, str], ...] = ()
        try:
            try:
                match, query = state.routes.resolve(exchange.raw_path)
                route = match.route
                route_name = route.name
                peer = exchange.remote
                trusted = state.config.listen.trusted_proxies
                if not route.public:
                    authenticated = await self._authenticate(exchange, route, peer, trusted)
                    identity, body = authenticated.identity, authenticated.body
                    if self.limiter is not None and authenticated.key is not None:
                        limited = self._limit(authenticated, route, identity)
                        limit_headers = (limited if limited is not None else
                                         await self._limit_later(authenticated, route,
                                                                 identity))
                trusted_peer = bool(trusted) and is_trusted(peer, trusted)
                key_headers = state.key_headers.get(route.name)
                if key_headers is not None:
                    drop = key_headers[0] if trusted_peer else key_headers[1]
                else:
                    drop = DROP_INBOUND if trusted_peer else state.drop_untrusted
                subject = exchange.client_subject  # verified (mTLS); a client's copy is dropped
                fields = upstream_request_fields(
                    exchange.headers,
                    peer=peer,
                    trusted_peer=trusted_peer,
                    scheme=exchange.scheme,
                    request_id=request_id,
                    identity=identity if subject is None
                    else {**(identity or {}), CLIENT_SUBJECT_HEADER: subject},
                    drop=drop,
                )
                address = state.upstreams[route.name]
                target_text = match.upstream_path
                if query and route.name in state.key_parameters:
                    query = without_parameters(query, state.key_parameters[route.name])
                if query:
                    target_text += "?" + query
                upstream = UpstreamRequest(route=route, origin=address.origin,
                                           host=address.host, method=exchange.method,
                                           target=target_text, fields=fields,
                                           request_id=request_id, body=body,
                                           response_headers=limit_headers)
                if exchange.client_gone:
                    return  # left while being authenticated: nothing is sent upstream
                upstream_started = time.perf_counter()
                exchange.forwarding = True
                try:
                    await forward(self.pool, exchange, upstream)
                finally:
                    exchange.forwarding = False
                    upstream_seconds = time.perf_counter() - upstream_started
            except RequestRefused as refused:
                outcome = refused.code
                if identity is None and refused.identity is not None:
                    identity = dict(refused.identity)  # for the access log only
                if limit_headers:  # an authenticated answer: the RateLimit fields too
                    refused.headers = {**dict(limit_headers), **refused.headers}
                if not exchange.started:
                    exchange.send_error(refused, request_id)
        finally:
            if body is not None:
                self.authenticator.release_body(body)  # a signed body, held until now
            TALLY.in_flight -= 1
            self._account(exchange, request_id, route_name, outcome, identity,
                          time.perf_counter() - started, upstream_seconds)

    def _limit(self, authenticated: Authenticated, route: RouteConfig,
               identity: dict[str, str]) -> tuple[tuple[str, str], ...] | None:
        """The rate limits and quotas on this key (gateway/limits): the RateLimit fields for
        the answer, None when the worker must wait for its next sync to decide (`_limit_later`),
        or RequestRefused (429, or 503 for a quota that fails closed while the store is away).
        Decided in this worker, without an await in the usual case: no store call here."""
        key, account = authenticated.key, authenticated.account
        assert key is not None and account is not None and self.limiter is not None
        table = self.limiter.table
        limits = applied_limits(key.id, key, account.id, account, route.name, route)
        if not limits:
            table.count(key.id)
            return ()
        headers = table.spend(limits, key.id)  # the usual case: a lease holds a token
        if headers is not None:
            return headers
        decision = table.decide(limits, key.id)
        if decision.outcome == "wait":
            return None
        return self._decided(decision, key.id, identity)

    async def _limit_later(self, authenticated: Authenticated, route: RouteConfig,
                           identity: dict[str, str]) -> tuple[tuple[str, str], ...]:
        """A key this worker holds no lease for yet (or a sudden rise): decided after the
        background sync it wakes (at most a second)."""
        key, account = authenticated.key, authenticated.account
        assert key is not None and account is not None and self.limiter is not None
        limits = applied_limits(key.id, key, account.id, account, route.name, route)
        decision = await self.limiter.decide_after_sync(limits, key.id)
        headers = self._decided(decision, key.id, identity)
        assert headers is not None
        return headers

    @staticmethod
    def _decided(decision: Decision, key_id: str,
                 identity: dict[str, str]) -> tuple[tuple[str, str], ...]:
        if decision.outcome == "admit":
            return decision.headers
        reason = decision.reason or "rate_limited"
        TALLY.counter(LIMIT_REFUSALS, key_id, reason).inc()
        refused = RequestRefused(reason, LIMIT_MESSAGES.get(reason, reason),
                                 {"Retry-After": str(decision.retry_after),
                                  **dict(decision.headers)})
        refused.identity = identity
        raise refused

    async def _authenticate(self, exchange: Exchange, route: RouteConfig, peer: str | None,
                            trusted: tuple[IPNetwork, ...]) -> Authenticated:
        throttle = self.throttle
        if throttle is None:
            return await self.authenticator.authenticate(exchange, route)
        # Brute force: a client past its failure budget gets 429 unless its credential is one
        # this worker holds as valid in memory (so a blocked address, a NAT or a load
        # balancer's, does not lock out the clients behind it whose keys are in use); nothing
        # it sends makes the store be asked for a key, so guessing costs the store nothing.
        client = client_address(peer, exchange.headers.getall("X-Forwarded-For", ()), trusted)
        wait = throttle.retry_after(client)
        if wait is not None and throttle.held(client):
            await throttle.settled(client)  # a lease or the block is on its way
            wait = throttle.retry_after(client)
        if wait is not None:
            try:
                authenticated = await self.authenticator.authenticate(exchange, route,
                                                                      cached_only=True)
            except RequestRefused as refused:
                if refused.code in COUNTED_CODES:
                    raise refusal(wait) from None
                raise
            return authenticated
        try:
            authenticated = await self.authenticator.authenticate(exchange, route)
        except RequestRefused as refused:
            if refused.code in COUNTED_CODES:
                throttle.record_failure(client)
            raise
        return authenticated

    def _account(self, request: Exchange, request_id: str, route_name: str, outcome: str,
                 identity: dict[str, str] | None, seconds: float,
                 upstream_seconds: float | None) -> None:
        # 499, as nginx says it: the client went away before it could be answered.
        status = request.status if request.started else CLIENT_CLOSED
        if not request.started:
            outcome = "client_closed"
        TALLY.counter(REQUESTS, route_name, method_label(request.method), str(status)).inc()
        TALLY.histogram(REQUEST_DURATION, route_name).observe(seconds)
        if upstream_seconds is not None:
            TALLY.histogram(UPSTREAM_DURATION, route_name).observe(upstream_seconds)
        if not self.access_log.enabled:
            return
        sent = request.bytes_sent
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
            "bytes_received": request.content.received,
            "client": request.remote,
            "host": request.headers.get("Host"),
            "user_agent": request.headers.get("User-Agent"),
            "http_version": request.version,
            "auth_method": identity.get("X-Auth-Method"),
            "key_id": identity.get("X-Auth-Key-Id"),
            "account_id": identity.get("X-Auth-Account-Id"),
            "outcome": outcome,
        })
