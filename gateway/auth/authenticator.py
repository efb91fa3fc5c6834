"""Authentication of one proxied request: credential -> key lookup (cache) -> decision.

The I/O (the cache, which may ask Redis; the nonce check; reading a signed body) is here; the
rules are in `credentials.py`, `decide.py` and `signatures.py`. Returns the identity headers to
forward (and, for a signed request with a body, the body it had to read, which the caller gives
back with `release_body` once the request has ended), or raises RequestRefused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.auth import apikey, signatures
from gateway.auth.credentials import (
    ApiKeyCredential,
    Credential,
    SignatureCredential,
    credential_from,
)
from gateway.auth.decide import Allow, Deny, decide, method_accepted, scope_decision
from gateway.auth.locations import DEFAULT_LOCATIONS, describe
from gateway.auth.throttle import COUNTED_CODES
from gateway.config import HmacConfig, RouteConfig
from gateway.errors import ClientGone, ClientTooSlow, RequestRefused, StoreUnavailable
from gateway.keys.cache import KeyCache
from gateway.keys.model import Account, KeyRecord
from gateway.keys.secrets import MasterKeyError, SecretBox
from gateway.keys.store import KeyStore
from gateway.keys.usage import UsageRecorder
from gateway.observability.metrics import AUTH_RESULTS, STORE_ERRORS
from gateway.observability.tally import TALLY

if TYPE_CHECKING:
    from gateway.proxy.listener import Exchange

log = logging.getLogger(__name__)
AUTH_METHOD_HEADER_VALUE = {"api_key": "api-key", "hmac": "hmac"}
MAX_OPENED_SECRETS = 10_000
RETRY_AFTER_BUSY = "1"
NOT_HELD = "the key is not one this worker holds as valid"


def identity_headers(key: KeyRecord, account: Account) -> dict[str, str]:
    return {
        "X-Auth-Account-Id": account.id,
        "X-Auth-Key-Id": key.id,
        "X-Auth-Method": AUTH_METHOD_HEADER_VALUE[key.type],
        "X-Auth-Scopes": " ".join(key.scopes),
    }


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a call per field, per request
class Authenticated:
    identity: dict[str, str]
    body: bytes | None = None  # a signed request's body, read to check its digest
    key: KeyRecord | None = None  # for the limits (gateway/limits) that apply to it
    account: Account | None = None


def _refuse(decision: Deny) -> RequestRefused:
    return RequestRefused(decision.code, decision.message)


# Refusals about a key the store holds: the access log names it (key, account, method).
REFUSALS_OF_A_KNOWN_KEY = frozenset({"expired_key", "account_disabled", "api_access_denied",
                                     "insufficient_scope", "replayed_request"})


def _about(refused: RequestRefused, key: KeyRecord, account: Account | None) -> RequestRefused:
    if refused.code in REFUSALS_OF_A_KNOWN_KEY:
        refused.identity = {"X-Auth-Account-Id": account.id if account else key.account_id,
                            "X-Auth-Key-Id": key.id,
                            "X-Auth-Method": AUTH_METHOD_HEADER_VALUE[key.type]}
    return refused


def _body_refused(gone: ClientGone) -> RequestRefused:
    if isinstance(gone, ClientTooSlow):
        return RequestRefused("request_timeout", str(gone))
    return RequestRefused("bad_request", "the request body was cut off or malformed")


def _store_down() -> RequestRefused:
    STORE_ERRORS.inc()
    return RequestRefused("key_store_unavailable", "the key store is unavailable; retry shortly")


class Authenticator:
    def __init__(self, cache: KeyCache, usage: UsageRecorder, store: KeyStore,
                 hmac_config: HmacConfig, secret_box: SecretBox | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.usage = usage
        self.store = store
        self.hmac_config = hmac_config
        self.secret_box = secret_box
        self.clock = clock
        self._opened: dict[str, bytes] = {}  # sealed secret -> HMAC key bytes
        self.buffered = 0  # bytes of signed bodies this worker holds (hmac.max_buffered_bytes)
        self._said_master_key = False

    async def authenticate(self, request: Exchange, route: RouteConfig, *,
                           cached_only: bool = False) -> Authenticated:
        """`cached_only` (a client under a brute-force block): a key this worker does not hold
        in its cache, fresh, is refused as unknown (`NOT_HELD`) without asking the store; the
        caller answers that, and every other counted failure, with the block's 429 (so they
        are not counted here as results)."""
        headers = request.headers
        locations = route.key_locations
        try:
            credential = credential_from(
                headers, locations,
                request.raw_path.partition("?")[2] if locations is not DEFAULT_LOCATIONS else "",
                accept_imported=self.cache.config.accept_imported)
        except RequestRefused as refused:
            # Named by what the request tried, so a malformed key still counts as an API key.
            method = ("hmac" if "Authorization" not in headers
                      and ("Signature" in headers or "Signature-Input" in headers)
                      else "api_key")
            if not cached_only:
                TALLY.counter(AUTH_RESULTS, method, refused.code).inc()
            raise
        method = credential.method if credential is not None else "none"
        try:
            result = await self._authenticate(credential, request, route, cached_only)
        except RequestRefused as refused:
            if not cached_only or refused.code not in COUNTED_CODES:
                TALLY.counter(AUTH_RESULTS, method, refused.code).inc()
            raise
        TALLY.counter(AUTH_RESULTS, method, "ok").inc()
        return result

    async def _authenticate(self, credential: Credential | None, request: Exchange,
                            route: RouteConfig, cached_only: bool) -> Authenticated:
        if credential is None:
            raise RequestRefused("missing_credentials",
                                 f"this route needs an API key ({describe(route.key_locations)})"
                                 " or a signed request")
        refused = method_accepted(route, credential.method)
        if refused is not None:
            raise _refuse(refused)
        if isinstance(credential, ApiKeyCredential):
            return await self._api_key(credential, route, cached_only)
        return await self._signed(credential, request, route, cached_only)

    async def _loaded(self, lookup: Callable[[], Awaitable[tuple[KeyRecord | None,
                                                                 Account | None]]],
                      cached_only: bool) -> tuple[KeyRecord | None, Account | None]:
        """A lookup the cache could not answer at once; 503 when the store is down. Under a
        block (`cached_only`) the store is not asked: the key is refused as unknown."""
        if cached_only:
            raise RequestRefused("invalid_credentials", NOT_HELD)
        try:
            return await lookup()
        except StoreUnavailable:
            raise _store_down() from None

    def _decide(self, key: KeyRecord | None, account: Account | None, *, method: str,
                route: RouteConfig, presented_hash: str | None = None,
                check_scopes: bool = True) -> tuple[Allow, float]:
        """Apply the decision to what the lookup found; refuse on Deny."""
        now = self.clock()
        decision = decide(method=method, route=route, key=key, account=account, now=now,
                          presented_hash=presented_hash, check_scopes=check_scopes)
        if isinstance(decision, Deny):
            refused = _refuse(decision)
            raise refused if key is None else _about(refused, key, account)
        return decision, now

    async def _api_key(self, credential: ApiKeyCredential, route: RouteConfig,
                       cached_only: bool) -> Authenticated:
        secret_hash = apikey.hash_secret(credential.secret)
        key, account = (self.cache.api_key_now(secret_hash)
                        or await self._loaded(lambda: self.cache.api_key(secret_hash),
                                              cached_only))
        allowed, now = self._decide(key, account, method="api_key", route=route,
                                    presented_hash=secret_hash)
        self.usage.record(allowed.key.id, now)
        return Authenticated(identity_headers(allowed.key, allowed.account), None,
                             allowed.key, allowed.account)

    async def _signed(self, credential: SignatureCredential, request: Exchange,
                      route: RouteConfig, cached_only: bool) -> Authenticated:
        try:
            candidates = signatures.parse_candidates(credential.signature_input,
                                                     credential.signature)
        except signatures.SignatureError as exc:
            raise RequestRefused(exc.code, exc.message) from None
        raw_path, has_query, query = request.raw_path.partition("?")
        facts = signatures.RequestFacts(
            method=request.method, scheme=request.scheme,
            authority=signatures.authority_of(request.headers.get("Host", ""), request.scheme),
            path=raw_path, query=query if has_query else None, headers=request.headers)
        if len(candidates) == 1:
            parsed, decision, now = await self._verified(candidates[0], request, route, facts,
                                                         cached_only)
        else:
            # Several signatures under gateway keyids (at most signatures.MAX_CANDIDATES): the
            # first that verifies is taken, so a bad one cannot hide a good one; when none
            # does, the first one's reason is the answer. A store outage is never a 401.
            first: RequestRefused | None = None
            for candidate in candidates:
                try:
                    parsed, decision, now = await self._verified(candidate, request, route,
                                                                 facts, cached_only)
                    break
                except RequestRefused as refused:
                    if refused.code == "key_store_unavailable":
                        raise
                    first = first or refused
            else:
                assert first is not None
                raise first

        # Everything that does not need the body comes before it is read (issue 17, item 2):
        # a replayed head, a key without the scopes, a declared length over the limit cost
        # no buffering at all.
        if request.body_exists:
            self._check_declared_length(request)
        try:
            fresh = await self.store.use_nonce(
                decision.key.id, parsed.nonce,
                signatures.nonce_ttl(parsed, now, self.hmac_config.clock_skew))
        except StoreUnavailable:
            raise _store_down() from None
        if not fresh:
            raise _about(RequestRefused("replayed_request", "this nonce was already used"),
                         decision.key, decision.account)

        allowed = scope_decision(decision, route)
        if isinstance(allowed, Deny):
            raise _about(_refuse(allowed), decision.key, decision.account)

        body = None
        if request.body_exists:
            body = await self._read_body(request)
            try:
                signatures.check_content_digest(request.headers.get("Content-Digest"), body)
            except signatures.SignatureError as exc:
                self.release_body(body)
                raise RequestRefused(exc.code, exc.message) from None
        self.usage.record(allowed.key.id, now)
        return Authenticated(identity_headers(allowed.key, allowed.account), body,
                             allowed.key, allowed.account)

    async def _verified(self, candidate: signatures.ParsedSignature | signatures.SignatureError,
                        request: Exchange, route: RouteConfig, facts: signatures.RequestFacts,
                        cached_only: bool) -> tuple[signatures.ParsedSignature, Allow, float]:
        """One signature checked up to its time window: components, key, HMAC, time."""
        try:
            if isinstance(candidate, signatures.SignatureError):
                raise candidate
            signatures.check_coverage(candidate, has_query=facts.query is not None,
                                      has_body=request.body_exists, query=facts.query)
        except signatures.SignatureError as exc:
            raise RequestRefused(exc.code, exc.message) from None

        # Scopes wait: the signature, its time window and the nonce come first (SPEC §3).
        key, account = (self.cache.key_by_id_now(candidate.keyid)
                        or await self._loaded(lambda: self.cache.key_by_id(candidate.keyid),
                                              cached_only))
        decision, now = self._decide(key, account, method="hmac", route=route,
                                     check_scopes=False)
        try:
            if not signatures.signature_matches(candidate, facts,
                                                self._keys_of(decision.key, now)):
                raise signatures.SignatureError("invalid_signature",
                                                "the signature does not match")
            signatures.check_time(candidate, now, self.hmac_config.clock_skew)
        except signatures.SignatureError as exc:
            raise RequestRefused(exc.code, exc.message) from None
        return candidate, decision, now

    def _keys_of(self, key: KeyRecord, now: float) -> list[bytes]:
        """The current secret, plus the old one while its grace period lasts."""
        sealed = [key.extra["secret"]]
        if key.previous_until is not None and now < key.previous_until \
                and "previous_secret" in key.extra:
            sealed.append(key.extra["previous_secret"])
        return [self._open(key.id, s) for s in sealed]

    def _open(self, key_id: str, sealed: str) -> bytes:
        # Decrypting costs more than the HMAC itself; each worker opens a secret once.
        opened = self._opened.get(sealed)
        if opened is None:
            if self.secret_box is None:
                self._say_once("signed requests cannot be checked: no master key is configured "
                               "(GATEWAY_MASTER_KEY)")
                raise RequestRefused("key_store_unavailable",
                                     "signed requests cannot be checked: no master key")
            try:
                opened = self.secret_box.open(key_id, sealed).encode("ascii")
            except MasterKeyError as exc:
                self._say_once(f"signed requests cannot be checked: {exc}")
                raise RequestRefused("key_store_unavailable",
                                     "the key's secret cannot be decrypted") from None
            if len(self._opened) >= MAX_OPENED_SECRETS:
                self._opened.clear()
            self._opened[sealed] = opened
        return opened

    def _too_large(self) -> RequestRefused:
        limit = self.hmac_config.max_body_bytes
        return RequestRefused("body_too_large",
                              f"a signed request's body may be at most {limit} bytes")

    def _check_declared_length(self, request: Exchange) -> None:
        if request.content_length is not None \
                and request.content_length > self.hmac_config.max_body_bytes:
            raise self._too_large()

    def _reserve(self, size: int) -> None:
        """Count `size` more bytes against this worker's `hmac.max_buffered_bytes`."""
        if self.buffered + size > self.hmac_config.max_buffered_bytes:
            raise RequestRefused(
                "server_busy", "the gateway is holding as many signed request bodies as it "
                "may; retry shortly", {"Retry-After": RETRY_AFTER_BUSY})
        self.buffered += size

    def release_body(self, body: bytes) -> None:
        """A body `authenticate` returned is no longer held (the request has ended)."""
        self.buffered -= len(body)

    def _say_once(self, message: str) -> None:
        """A master-key problem is logged once per process, not per request."""
        if not self._said_master_key:
            self._said_master_key = True
            log.error("%s", message)

    async def _read_body(self, request: Exchange) -> bytes:
        """Buffer a signed body to check its digest, never past `hmac.max_body_bytes`, nor past
        `hmac.max_buffered_bytes` for all the bodies this worker holds. A declared length is
        counted whole before the first byte is read; a chunked body as it arrives. The bytes
        stay counted until the caller releases the body (release_body)."""
        limit = self.hmac_config.max_body_bytes
        length = request.content_length
        if length is not None:
            self._reserve(length)
        reserved = length or 0
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                try:
                    chunk = await request.content.readany()
                except ClientGone as gone:
                    raise _body_refused(gone) from None
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise self._too_large()
                if size > reserved:
                    self._reserve(size - reserved)
                    reserved = size
                chunks.append(chunk)
        except BaseException:
            self.buffered -= reserved
            raise
        return b"".join(chunks)
