"""Where the key may come from (issue 19): a real gateway, a real Redis and a real upstream that
echoes what it received. Every listed place authenticates, none reaches the upstream, and a
key in a query parameter never reaches the access log."""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.conftest import make_config, new_key

LOCATIONS = ["api-key", "bearer", "header:apikey", "header:X-API-Key", "query:apikey"]


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{upstream.port}"
    return await start_gateway(make_config(redis_clean.url, [
        {"name": "moved", "prefix": "/moved/", "upstream": url, "key_locations": LOCATIONS},
        {"name": "plain", "prefix": "/plain/", "upstream": url},
    ]))


async def echoed(http: Any, url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


async def test_every_location_authenticates_and_none_reaches_the_upstream(
        gateway, key_service, http) -> None:
    key, secret, _ = await new_key(key_service)
    stream = io.BytesIO()
    gateway.running.access_log.stream = stream
    ways = [({"Authorization": f"Api-Key {secret}"}, ""),
            ({"Authorization": f"Bearer {secret}"}, ""),
            ({"apikey": secret}, ""),
            ({"X-API-Key": secret}, ""),
            ({}, f"apikey={secret}")]
    for headers, query in ways:
        url = f"{gateway.url}/moved/x?a=1" + (f"&{query}&b=2" if query else "")
        status, seen = await echoed(http, url, headers)
        assert status == 200, (headers, query, seen)
        assert seen["headers"]["X-Auth-Key-Id"] == key.id
        assert secret not in repr(seen), (headers, query)  # not in a header, not in the query
        assert seen["query"] == ("a=1&b=2" if query else "a=1")
    # A listed header is removed even when the key came from elsewhere.
    status, seen = await echoed(http, f"{gateway.url}/moved/x",
                                {"Authorization": f"Bearer {secret}", "X-API-Key": ""})
    assert status == 400  # an empty X-API-Key is a second (empty) key: refused, not guessed
    status, seen = await echoed(http, f"{gateway.url}/moved/x?apikey=",
                                {"Authorization": f"Bearer {secret}"})
    assert status == 400
    gateway.running.access_log.flush()
    log = stream.getvalue().decode()
    assert log.count('"path":"/moved/x"') == len(ways) + 2
    assert "apikey" not in log and secret not in log  # the query is never logged


async def test_a_route_reads_only_its_own_locations(gateway, key_service, http) -> None:
    _, secret, _ = await new_key(key_service)
    status, body = await echoed(http, f"{gateway.url}/plain/x", {"Authorization":
                                                                 f"Bearer {secret}"})
    assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    assert "use Authorization: Api-Key <key>" in body["error"]["message"]
    status, body = await echoed(http, f"{gateway.url}/plain/x?apikey={secret}",
                                {"apikey": secret})
    assert (status, body["error"]["code"]) == (401, "missing_credentials")
    # Where the route does not read it, an apikey header is the upstream's business.
    status, seen = await echoed(http, f"{gateway.url}/plain/x",
                                {"Authorization": f"Api-Key {secret}", "apikey": "theirs"})
    assert status == 200 and seen["headers"]["apikey"] == "theirs"
    status, body = await echoed(http, f"{gateway.url}/moved/x", {})
    assert status == 401
    assert body["error"]["message"] == (
        "this route needs an API key (Authorization: Api-Key <key> or Authorization: Bearer "
        "<key> or apikey: <key> or x-api-key: <key> or ?apikey=<key>) or a signed request")


async def test_a_key_in_two_places_is_refused(gateway, key_service, http) -> None:
    _, secret, _ = await new_key(key_service)
    _, other, _ = await new_key(key_service)
    for headers, query in [({"apikey": secret, "X-API-Key": other}, ""),
                           ({"Authorization": f"Bearer {other}"}, f"apikey={secret}"),
                           ({"apikey": secret}, f"apikey={secret}")]:
        status, body = await echoed(http, f"{gateway.url}/moved/x?{query}", headers)
        assert (status, body["error"]["code"]) == (400, "bad_request"), (headers, query)
        assert "more than one place" in body["error"]["message"]
