"""The admin HTTP API (SPEC §8) against a real gateway and Redis: auth, accounts, keys, paging,
reissue with grace through the proxy, batch delete, and the audit trail."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import api_key, make_config

TOKEN = "s3cret-admin-token"
OPS_TOKEN = "another-token-for-ops"
VISION = "yc.ai.vision.execute"


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    config = make_config(
        redis_clean.url,
        [{"name": "vision", "prefix": "/vision/", "upstream":
          f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]}],
        admin={"host": "127.0.0.1", "port": 0, "token": TOKEN,
               "tokens": [{"label": "ops",
                           "sha256": hashlib.sha256(OPS_TOKEN.encode()).hexdigest()}]})
    return await start_gateway(config)


class Admin:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str = TOKEN) -> None:
        self.http, self.base, self.token = http, base, token

    async def call(self, method: str, path: str, body: Any = None,
                   expect: int | None = None, **params: str) -> Any:
        async with self.http.request(method, self.base + path, json=body, params=params,
                                     headers={"Authorization": f"Bearer {self.token}"}
                                     ) as response:
            data = await response.json()
            if expect is not None:
                assert response.status == expect, data
            return data


@pytest.fixture
def admin(gateway, http) -> Admin:  # type: ignore[no-untyped-def]
    return Admin(http, gateway.admin_url)


async def test_no_token_configured_turns_the_admin_api_off(redis_clean, start_gateway, http,
                                                           caplog) -> None:
    caplog.set_level(logging.WARNING)
    gateway = await start_gateway(make_config(redis_clean.url, []))
    async with http.get(gateway.admin_url + "/admin/accounts",
                        headers={"Authorization": "Bearer anything"}) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "admin_api_disabled"
    assert caplog.text.count("the admin API is off") == 1
    async with http.get(gateway.admin_url + "/healthz") as response:
        assert response.status == 200


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer ",
                                           f"Bearer {TOKEN}x", TOKEN])
async def test_a_wrong_or_missing_token_gets_401(gateway, http, authorization) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with http.get(gateway.admin_url + "/admin/accounts", headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["code"] == "unauthorized"


async def test_accounts_lifecycle(admin) -> None:
    created = await admin.call("POST", "/admin/accounts", {"name": "billing"}, expect=201)
    assert created["api_access"] is True and created["enabled"] is True
    assert created["key_count"] == 0
    account_id = created["id"]
    assert (await admin.call("GET", f"/admin/accounts/{account_id}", expect=200)) == created
    changed = await admin.call("PATCH", f"/admin/accounts/{account_id}",
                               {"enabled": False, "api_access": False}, expect=200)
    assert (changed["enabled"], changed["api_access"]) == (False, False)
    error = await admin.call("PATCH", f"/admin/accounts/{account_id}", {"name": "x"},
                             expect=422)
    assert "name" in error["error"]["message"]
    listed = await admin.call("GET", "/admin/accounts", expect=200)
    assert [a["id"] for a in listed["items"]] == [account_id]

    await admin.call("PATCH", f"/admin/accounts/{account_id}", {"api_access": True}, expect=200)
    key = await admin.call("POST", "/admin/keys", {"account_id": account_id}, expect=201)
    refused = await admin.call("DELETE", f"/admin/accounts/{account_id}", expect=409)
    assert "1 key" in refused["error"]["message"]
    deleted = await admin.call("DELETE", f"/admin/accounts/{account_id}", expect=200,
                               delete_keys="true")
    assert deleted == {"deleted_account": account_id, "deleted_keys": [key["id"]]}
    await admin.call("GET", f"/admin/keys/{key['id']}", expect=404)
    await admin.call("GET", f"/admin/accounts/{account_id}", expect=404)


async def test_key_create_get_patch_and_the_secret_shown_once(gateway, admin, http) -> None:
    account = await admin.call("POST", "/admin/accounts", {"name": "a"}, expect=201)
    created = await admin.call("POST", "/admin/keys", {
        "account_id": account["id"], "scopes": [VISION], "expires_in": "30d",
        "description": "ci"}, expect=201)
    secret = created["secret"]
    assert secret.startswith("gwk_") and len(secret) == 40
    fetched = await admin.call("GET", f"/admin/keys/{created['id']}", expect=200)
    assert "secret" not in fetched and secret not in str(fetched)
    assert fetched["masked_secret"].endswith(secret[-6:])
    async with http.get(gateway.url + "/vision/x", headers=api_key(secret)) as response:
        assert response.status == 200

    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400 * 3))
    patched = await admin.call("PATCH", f"/admin/keys/{created['id']}",
                               {"expires_at": later, "description": "renamed"}, expect=200)
    assert patched["expires_at"] == later and patched["description"] == "renamed"
    cleared = await admin.call("PATCH", f"/admin/keys/{created['id']}", {"expires_at": None},
                               expect=200)
    assert cleared["expires_at"] is None
    for field, value in (("scopes", ["yc.*"]), ("account_id", account["id"]),
                         ("type", "hmac"), ("bogus", 1)):
        error = await admin.call("PATCH", f"/admin/keys/{created['id']}", {field: value},
                                 expect=422)
        assert error["error"]["message"].startswith(f"{field}:")
    past = await admin.call("PATCH", f"/admin/keys/{created['id']}",
                            {"expires_at": "2001-01-01T00:00:00Z"}, expect=422)
    assert "future" in past["error"]["message"]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "account_id"),
    ({"account_id": "acc_x", "scopes": ["not a scope"]}, None),
    # A trailing newline would reach the upstream inside X-Auth-Scopes.
    ({"account_id": "acc_x", "scopes": ["yc.ai.vision.execute\n"]}, None),
    ({"account_id": "acc_x", "scopes": ["*\r\n"]}, None),
    ({"account_id": "acc_x", "expires_in": "soon"}, "expires_in"),
    ({"account_id": "acc_x", "expires_at": "yesterday"}, "expires_at"),
    ({"account_id": "acc_x", "expires_at": "2030-01-01T00:00:00Z", "expires_in": "1d"},
     "expires_in"),
    ({"account_id": "acc_x", "secret": "gwk_mine"}, "secret"),
])
async def test_key_create_validation(admin, body, field) -> None:
    account = await admin.call("POST", "/admin/accounts", {"name": "v"}, expect=201)
    if body.get("account_id") == "acc_x":
        body = {**body, "account_id": account["id"]}
    error = await admin.call("POST", "/admin/keys", body, expect=422)
    if field:
        assert error["error"]["message"].startswith(f"{field}:")


async def test_keys_for_accounts_without_api_access_are_refused(admin) -> None:
    account = await admin.call("POST", "/admin/accounts",
                               {"name": "n", "api_access": False}, expect=201)
    error = await admin.call("POST", "/admin/keys", {"account_id": account["id"]}, expect=409)
    assert "api_access" in error["error"]["message"]


async def test_listing_pages_in_a_stable_order(admin) -> None:
    first = await admin.call("POST", "/admin/accounts", {"name": "one"}, expect=201)
    second = await admin.call("POST", "/admin/accounts", {"name": "two"}, expect=201)
    created = []
    for index in range(25):
        owner = first if index % 5 else second
        created.append((await admin.call("POST", "/admin/keys", {"account_id": owner["id"]},
                                         expect=201))["id"])
    seen: list[str] = []
    cursors: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        page = await admin.call("GET", "/admin/keys", expect=200, **params)
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert pages == 3
    assert seen == created  # creation order, every key once
    only_second = await admin.call("GET", "/admin/keys", expect=200,
                                   account_id=second["id"])
    assert [k["id"] for k in only_second["items"]] == created[::5]
    await admin.call("GET", "/admin/keys", expect=422, cursor="not-a-cursor")
    await admin.call("GET", "/admin/keys", expect=422, cursor=cursors[0] + "\n")
    await admin.call("GET", "/admin/keys", expect=422, limit="0")
    await admin.call("GET", "/admin/keys", expect=404, account_id="acc_missing")


async def test_batch_delete_is_all_or_nothing(gateway, admin, http) -> None:
    account = await admin.call("POST", "/admin/accounts", {"name": "b"}, expect=201)
    keys = [await admin.call("POST", "/admin/keys", {"account_id": account["id"],
                                                     "scopes": [VISION]}, expect=201)
            for _ in range(3)]
    ids = [k["id"] for k in keys]
    await admin.call("POST", "/admin/keys/delete", {"ids": [*ids[:2], "ak_missing"]},
                     expect=404)
    for key in keys:
        await admin.call("GET", f"/admin/keys/{key['id']}", expect=200)
    result = await admin.call("POST", "/admin/keys/delete", {"ids": ids[:2]}, expect=200)
    assert result == {"deleted": ids[:2]}
    for key, status in zip(keys, (401, 401, 200), strict=True):
        async with http.get(gateway.url + "/vision/x",
                            headers=api_key(key["secret"])) as response:
            assert response.status == status


async def test_reissue_with_grace_through_the_proxy(gateway, admin, http) -> None:
    account = await admin.call("POST", "/admin/accounts", {"name": "r"}, expect=201)
    key = await admin.call("POST", "/admin/keys", {"account_id": account["id"],
                                                   "scopes": [VISION]}, expect=201)
    old = key["secret"]
    reissued = await admin.call("POST", f"/admin/keys/{key['id']}/reissue", {"grace": "1s"},
                                expect=200)
    new = reissued["secret"]
    assert reissued["id"] == key["id"] and reissued["scopes"] == key["scopes"]
    assert new != old and reissued["previous_secret_valid_until"] is not None
    for secret in (old, new):
        async with http.get(gateway.url + "/vision/x", headers=api_key(secret)) as response:
            assert response.status == 200
    await asyncio.sleep(1.2)
    async with http.get(gateway.url + "/vision/x", headers=api_key(old)) as response:
        assert response.status == 401
    async with http.get(gateway.url + "/vision/x", headers=api_key(new)) as response:
        assert response.status == 200


async def test_the_audit_trail_names_who_did_what_and_holds_no_secret(gateway, admin,
                                                                      http) -> None:
    ops = Admin(http, gateway.admin_url, OPS_TOKEN)
    account = await admin.call("POST", "/admin/accounts", {"name": "audited"}, expect=201)
    key = await ops.call("POST", "/admin/keys", {"account_id": account["id"]}, expect=201)
    reissued = await ops.call("POST", f"/admin/keys/{key['id']}/reissue", {}, expect=200)
    await admin.call("PATCH", f"/admin/keys/{key['id']}", {"description": "x"}, expect=200)
    await admin.call("DELETE", f"/admin/keys/{key['id']}", expect=200)
    trail = await admin.call("GET", "/admin/audit", expect=200)
    actions = [(e["actor"], e["action"], e["ids"]) for e in trail["items"]]
    assert actions == [
        ("admin", "account.create", [account["id"]]),
        ("ops", "key.create", [key["id"]]),
        ("ops", "key.reissue", [key["id"]]),
        ("admin", "key.update", [key["id"]]),
        ("admin", "key.delete", [key["id"]]),
    ]
    text = str(trail)
    assert key["secret"] not in text and reissued["secret"] not in text
    since = trail["items"][2]["at"]
    later = await admin.call("GET", "/admin/audit", expect=200, since=since)
    assert all(entry["at"] >= since for entry in later["items"])
    assert [e["id"] for e in trail["items"][2:]] == [e["id"] for e in later["items"]][-3:]
    future = await admin.call("GET", "/admin/audit", expect=200, since="2100-01-01T00:00:00Z")
    assert future["items"] == []
    paged = await admin.call("GET", "/admin/audit", expect=200, limit="2")
    rest = await admin.call("GET", "/admin/audit", expect=200, cursor=paged["next_cursor"])
    assert [e["id"] for e in paged["items"] + rest["items"]] == [e["id"] for e in
                                                                 trail["items"]]
    await admin.call("GET", "/admin/audit", expect=422, cursor=paged["next_cursor"] + "\n")
    await admin.call("GET", "/admin/audit", expect=422, cursor="\u0661\u0662-0")  # not ASCII


async def test_bad_bodies_and_unknown_paths_get_json_errors(gateway, http) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(gateway.admin_url + "/admin/accounts", data=b"{not json",
                         headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_request"
    async with http.post(gateway.admin_url + "/admin/accounts", json=[1, 2],
                         headers=headers) as response:
        assert response.status == 400
    async with http.get(gateway.admin_url + "/admin/nothing", headers=headers) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with http.put(gateway.admin_url + "/admin/accounts", headers=headers) as response:
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_hmac_keys_through_the_admin_api(redis_clean, upstream, start_gateway,
                                               http) -> None:
    import base64
    import os

    from gateway.client import sign_request
    from gateway.config import build_config

    data = {"listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0, "token": TOKEN},
            "redis": {"url": redis_clean.url},
            "routes": [{"name": "vision", "prefix": "/vision/",
                        "upstream": f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]}]}
    master = {"GATEWAY_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    gateway = await start_gateway(build_config(data, "<test>", master))
    admin = Admin(http, gateway.admin_url)
    account = await admin.call("POST", "/admin/accounts", {"name": "h"}, expect=201)
    refused = await admin.call("POST", "/admin/keys", {"account_id": account["id"],
                                                       "type": "hmac"}, expect=422)
    assert "expiry" in refused["error"]["message"]
    key = await admin.call("POST", "/admin/keys", {"account_id": account["id"], "type": "hmac",
                                                   "scopes": [VISION], "expires_in": "1d"},
                           expect=201)
    assert key["id"].startswith("gwh_") and len(key["secret"]) == 43
    url = gateway.url + "/vision/x"
    headers = sign_request("GET", url, key_id=key["id"], secret=key["secret"])
    async with http.get(url, headers=headers) as response:
        assert response.status == 200


async def test_routes_are_listed_with_their_scopes_for_the_page(gateway, admin) -> None:
    routes = await admin.call("GET", "/admin/routes", expect=200)
    assert routes == {"items": [{"name": "vision", "prefix": "/vision", "scopes": [VISION],
                                 "public": False, "auth": ["api_key", "hmac"]}],
                      "proxy_port": gateway.running.proxy_port}
