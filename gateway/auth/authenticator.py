"""Authentication of one proxied request: credential -> key lookup (cache) -> decision.

The I/O (the cache, which may ask Redis) is here; the rules are in `credentials.py` and
`decide.py`. Returns the identity headers to forward, or raises RequestRefused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from multidict import CIMultiDictProxy

from gateway.auth import apikey
from gateway.auth.credentials import ApiKeyCredential, credential_from
from gateway.auth.decide import Deny, decide, method_accepted
from gateway.config import RouteConfig
from gateway.errors import RequestRefused, StoreUnavailable
from gateway.keys.cache import KeyCache
from gateway.keys.model import Account, KeyRecord
from gateway.keys.usage import UsageRecorder

AUTH_METHOD_HEADER_VALUE = {"api_key": "api-key", "hmac": "hmac"}


def identity_headers(key: KeyRecord, account: Account) -> dict[str, str]:
    return {
        "X-Auth-Account-Id": account.id,
        "X-Auth-Key-Id": key.id,
        "X-Auth-Method": AUTH_METHOD_HEADER_VALUE[key.type],
        "X-Auth-Scopes": " ".join(key.scopes),
    }


class Authenticator:
    def __init__(self, cache: KeyCache, usage: UsageRecorder,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.usage = usage
        self.clock = clock

    async def authenticate(self, headers: CIMultiDictProxy[str],
                           route: RouteConfig) -> dict[str, str]:
        credential = credential_from(headers)
        if credential is None:
            raise RequestRefused("missing_credentials",
                                 "this route needs an API key (Authorization: Api-Key <key>) "
                                 "or a signed request")
        refused = method_accepted(route, credential.method)
        if refused is not None:
            raise RequestRefused(refused.code, refused.message)
        if not isinstance(credential, ApiKeyCredential):
            raise RequestRefused("invalid_signature",
                                 "signed requests are not supported by this gateway version")

        secret_hash = apikey.hash_secret(credential.secret)
        try:
            key, account = await self.cache.api_key(secret_hash)
        except StoreUnavailable:
            raise RequestRefused("key_store_unavailable",
                                 "the key store is unavailable; retry shortly") from None
        now = self.clock()
        decision = decide(method="api_key", route=route, key=key, account=account, now=now,
                          presented_hash=secret_hash)
        if isinstance(decision, Deny):
            raise RequestRefused(decision.code, decision.message)
        self.usage.record(decision.key.id, now)
        return identity_headers(decision.key, decision.account)
