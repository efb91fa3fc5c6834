"""API-key authentication end to end (SPEC §1-§3, §5, §6): real Redis, real upstream."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from gateway.keys.model import KeyRecord
from tests.conftest import api_key, make_config, new_key

VISION = "yc.ai.vision.execute"
STT = "yc.ai.speechkitStt.execute"
FUNCTIONS = "yc.serverless.functions.invoke"
YDB = "yc.ydb.tables.manage"


def routes_to(upstream: Any) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{upstream.port}"
    return [
        {"name": "vision", "prefix": "/vision/", "upstream": url, "scopes": [VISION]},
        {"name": "speech", "prefix": "/speech/", "upstream": url, "scopes": [STT]},
        {"name": "functions", "prefix": "/functions/", "upstream": url, "scopes": [FUNCTIONS]},
        {"name": "ydb", "prefix": "/ydb/", "upstream": url,
         "scopes": [YDB, "yc.ydb.topics.manage"]},
        {"name": "any-key", "prefix": "/any-key/", "upstream": url},
        {"name": "hmac-only", "prefix": "/hmac-only/", "upstream": url, "auth": ["hmac"]},
        {"name": "public", "prefix": "/public/", "upstream": url, "public": True},
    ]


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    return await start_gateway(make_config(redis_clean.url, routes_to(upstream)))


async def status_of(http: Any, url: str, headers: dict[str, str] | None = None
                    ) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    async with http.get(url, headers=headers or {}) as response:
        body = orjson.loads(await response.read())
        return response.status, body, CIMultiDict(response.headers)


@pytest.mark.parametrize(("scopes", "expected"), [
    ((VISION,), {"vision": 200, "speech": 403, "functions": 403, "ydb": 403, "any-key": 200}),
    (("yc.ai.*",), {"vision": 200, "speech": 200, "functions": 403, "ydb": 403,
                    "any-key": 200}),
    ((YDB,), {"vision": 403, "ydb": 403, "any-key": 200}),  # a route may need several scopes
    ((YDB, "yc.ydb.topics.manage"), {"ydb": 200, "vision": 403}),
    (("yc.*",), {"vision": 200, "speech": 200, "functions": 200, "ydb": 200, "any-key": 200}),
    ((), {"vision": 403, "any-key": 200}),
])
async def test_a_key_opens_exactly_the_routes_its_scopes_cover(gateway, key_service, http,
                                                               scopes, expected) -> None:
    _, secret, _ = await new_key(key_service, scopes)
    for route, status in expected.items():
        got, body, _ = await status_of(http, f"{gateway.url}/{route}/x", api_key(secret))
        assert got == status, (route, body)
        if status == 403:
            assert body["error"]["code"] == "insufficient_scope"


async def test_insufficient_scope_names_the_missing_scopes(gateway, key_service, http) -> None:
    _, secret, _ = await new_key(key_service, (YDB,))
    status, body, _ = await status_of(http, gateway.url + "/ydb/x", api_key(secret))
    assert status == 403
    assert "yc.ydb.topics.manage" in body["error"]["message"]
    assert YDB not in body["error"]["message"].split(": ", 1)[1].split()


async def _crafted_key(key_service: Any, **changes: Any) -> tuple[KeyRecord, str]:
    """A key written straight into the store (the service refuses e.g. past expiries)."""
    key, secret, _ = await new_key(key_service, (VISION,))
    changed = key.with_changes(**changes)
    await key_service.store.replace_key(key, changed)
    return changed, secret


async def test_every_refusal_has_its_code(gateway, key_service, http) -> None:
    url = gateway.url + "/vision/x"
    _, good, account = await new_key(key_service, (VISION,))
    _, expired = await _crafted_key(key_service, expires_at=time.time() - 1)
    _, disabled, disabled_account = await new_key(key_service, (VISION,))
    await key_service.update_account(disabled_account.id, enabled=False)
    _, no_access, no_access_account = await new_key(key_service, (VISION,))
    await key_service.update_account(no_access_account.id, api_access=False)
    unknown = "gwk_" + "A" * 30
    from gateway.auth.apikey import _checksum  # the real checksum: well-formed but unknown
    unknown += _checksum("A" * 30)

    cases: list[tuple[dict[str, str], int, str]] = [
        ({}, 401, "missing_credentials"),
        ({"Authorization": "Api-Key gwk_short"}, 401, "invalid_credentials"),
        ({"Authorization": "Api-Key " + good[:-1] + ("a" if good[-1] != "a" else "b")},
         401, "invalid_credentials"),
        ({"Authorization": f"Api-Key {unknown}"}, 401, "invalid_credentials"),
        ({"Authorization": f"Bearer {good}"}, 401, "invalid_credentials"),
        ({"Authorization": f"Api-Key {expired}"}, 401, "expired_key"),
        ({"Authorization": f"Api-Key {disabled}"}, 403, "account_disabled"),
        ({"Authorization": f"Api-Key {no_access}"}, 403, "api_access_denied"),
        ({"Authorization": f"api-key {good}"}, 200, ""),  # auth schemes are case-insensitive
    ]
    for headers, status, code in cases:
        got, body, response_headers = await status_of(http, url, headers)
        assert got == status, (headers, body)
        if code:
            assert body["error"]["code"] == code
            assert body["error"]["request_id"] == response_headers["X-Request-Id"]
        if status == 401:
            challenge = response_headers["WWW-Authenticate"]
            assert "Api-Key" in challenge and "Signature" in challenge
    assert account.enabled


async def test_repeated_authorization_and_mixed_credentials_are_bad_requests(
        gateway, key_service) -> None:
    from tests.conftest import raw_request

    _, secret, _ = await new_key(key_service, (VISION,))
    for extra in (f"Authorization: Api-Key {secret}\r\n",
                  "Signature: sig1=:AAAA:\r\nSignature-Input: sig1=();created=1\r\n"):
        raw = await raw_request(
            gateway.running.proxy_port,
            (f"GET /vision/x HTTP/1.1\r\nHost: t\r\nAuthorization: Api-Key {secret}\r\n"
             f"{extra}Connection: close\r\n\r\n").encode())
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), raw
        assert orjson.loads(body)["error"]["code"] == "bad_request"


async def test_route_accepting_only_signatures_refuses_api_keys(gateway, key_service,
                                                                http) -> None:
    _, secret, _ = await new_key(key_service, ())
    status, body, _ = await status_of(http, gateway.url + "/hmac-only/x", api_key(secret))
    assert status == 401
    assert body["error"]["code"] == "invalid_credentials"
    assert "hmac-only" in body["error"]["message"]


async def test_identity_headers_replace_spoofed_ones_and_the_secret_never_reaches_upstream(
        gateway, key_service, http) -> None:
    key, secret, account = await new_key(key_service, (VISION, "yc.ai.*"))
    headers = {**api_key(secret), "X-Auth-Account-Id": "acc_spoofed",
               "X-Auth-Key-Id": "spoofed", "X-Auth-Scopes": "everything",
               "X-Auth-Method": "hmac", "X-Auth-Admin": "true"}
    status, echo, _ = await status_of(http, gateway.url + "/vision/x", headers)
    assert status == 200
    seen = CIMultiDict(echo["headers"])
    assert seen["X-Auth-Account-Id"] == account.id
    assert seen["X-Auth-Key-Id"] == key.id
    assert seen["X-Auth-Method"] == "api-key"
    assert seen["X-Auth-Scopes"] == f"{VISION} yc.ai.*"
    assert "X-Auth-Admin" not in seen
    assert "Authorization" not in seen
    assert secret not in orjson.dumps(echo).decode()


async def test_public_routes_need_no_credential_and_add_no_identity(gateway, key_service,
                                                                    http) -> None:
    _, secret, _ = await new_key(key_service, (VISION,))
    status, echo, _ = await status_of(http, gateway.url + "/public/x")
    assert status == 200
    # Even with a valid key and spoofed identity, a public route forwards no identity.
    status, echo, _ = await status_of(http, gateway.url + "/public/x",
                                      {**api_key(secret), "X-Auth-Account-Id": "acc_x"})
    assert status == 200
    seen = CIMultiDict(echo["headers"])
    assert not [name for name in seen if name.lower().startswith("x-auth-")]
    assert "Authorization" not in seen


async def test_keys_created_without_scopes_get_the_configured_defaults(redis_clean) -> None:
    from tests.conftest import service_for

    service, redis = await service_for(redis_clean.url)
    try:
        service.default_scopes = ("yc.ai.*",)
        key, _, _ = await new_key(service, ())
        stored = await service.get_key(key.id)
        assert stored.scopes == ("yc.ai.*",)
        explicit, _, _ = await new_key(service, (YDB,))
        assert (await service.get_key(explicit.id)).scopes == (YDB,)
    finally:
        await redis.aclose()


async def test_stored_records_hold_no_secret(gateway, key_service, redis_clean) -> None:
    key, secret, _ = await new_key(key_service, (VISION,))
    client = redis_clean.client()
    everything = b"".join(client.dump(name) or b"" for name in client.keys("*"))
    assert secret.encode() not in everything
    record = orjson.loads(client.get(f"gw:key:{key.id}"))
    assert record["secret_tail"] == secret[-6:]
    import hashlib
    assert record["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
