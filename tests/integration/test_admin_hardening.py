"""The admin listener hardened (issue 17, item 5): every request logged as a JSON line with no
secret in it; failed token checks counted in `gateway_admin_auth_failures_total` and slowed per
client address (429 with Retry-After); answers carrying a secret are `no-store`, all are
`nosniff`; every number is ASCII digits or 422 (`limit=²` used to answer 500)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.admin.guard import MAX_FAILURES
from tests.conftest import make_config
from tests.support.processes import GatewayProcess, write_config

TOKEN = "admin-hardening-token-7f3e9a1c55"
METRIC = "gateway_admin_auth_failures_total"


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    return await start_gateway(make_config(
        redis_clean.url, [{"name": "vision", "prefix": "/vision/",
                           "upstream": f"http://127.0.0.1:{upstream.port}"}],
        admin={"host": "127.0.0.1", "port": 0, "token": TOKEN}))


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = TOKEN,
               body: Any = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.request(method, url, headers=headers, json=body) as answer:
        return answer.status, dict(answer.headers), await answer.read()


def admin_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = orjson.loads(line)
            if record.get("log") == "admin":
                lines.append(record)
    return lines


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_every_admin_request_is_logged_without_secrets_and_answers_carry_safe_headers(
        tmp_path, redis_clean, http, workers: str) -> None:  # type: ignore[no-untyped-def]
    config_path, port, admin_port = write_config(
        tmp_path / "gateway.yaml", redis_clean.url,
        [{"name": "vision", "prefix": "/vision/", "upstream": "http://127.0.0.1:9"}])
    gateway = GatewayProcess(config_path, port, admin_port, env={"GATEWAY_ADMIN_TOKEN": TOKEN},
                             extra_args=("--workers", workers)).start()
    try:
        await _exercise_and_check_the_log(gateway, http)
    finally:
        gateway.stop()


async def _exercise_and_check_the_log(gateway: GatewayProcess,
                                      http: aiohttp.ClientSession) -> None:
    base = gateway.admin_url
    status, headers, body = await call(http, "POST", base + "/admin/accounts",
                                       body={"name": "logged"})
    assert status == 201
    account = orjson.loads(body)
    status, headers, body = await call(http, "POST", base + "/admin/keys",
                                       body={"account_id": account["id"]})
    assert status == 201
    secret = orjson.loads(body)["secret"]
    assert headers["Cache-Control"] == "no-store"
    status, headers, body = await call(http, "POST", base + f"/admin/keys/"
                                       f"{orjson.loads(body)['id']}/reissue", body={})
    assert status == 200 and headers["Cache-Control"] == "no-store"
    reissued = orjson.loads(body)["secret"]
    answers = [headers]
    answers.append((await call(http, "GET", base + "/admin/keys"))[1])
    answers.append((await call(http, "GET", base + "/admin/keys", token="wrong-token"))[1])
    answers.append((await call(http, "GET", base + "/admin/nowhere"))[1])
    for path in ("/healthz", "/readyz", "/metrics", "/admin/openapi.json", "/ui/"):
        answers.append((await call(http, "GET", base + path, token=None))[1])
    assert all(h.get("X-Content-Type-Options") == "nosniff" for h in answers), answers

    await asyncio.sleep(0.5)  # the log's buffer is written every 0.2 s
    out = gateway.log()
    lines = admin_lines(out)
    seen = [(line["method"], line["path"], line["status"]) for line in lines]
    assert ("POST", "/admin/accounts", 201) in seen
    assert ("POST", "/admin/keys", 201) in seen
    assert ("GET", "/admin/keys", 401) in seen and ("GET", "/ui/", 200) in seen
    assert not [line for line in lines if line["path"] in ("/healthz", "/readyz", "/metrics")]
    refused = next(line for line in lines if line["status"] == 401)
    assert refused["outcome"] == "unauthorized" and refused["actor"] is None
    created = next(line for line in lines if line["path"] == "/admin/keys"
                   and line["status"] == 201)
    assert created["actor"] and created["outcome"] == "ok" and created["client"] == "127.0.0.1"
    for text in (TOKEN, secret, reissued, "wrong-token"):
        assert text not in out


async def test_repeated_wrong_tokens_are_counted_and_slowed(gateway, http) -> None:  # type: ignore[no-untyped-def]
    before = {reason: REGISTRY.get_sample_value(METRIC, {"reason": reason}) or 0.0
              for reason in ("missing", "invalid")}
    url = gateway.admin_url + "/admin/accounts"
    statuses = [(await call(http, "GET", url, token=f"guess-{i}"))[0]
                for i in range(MAX_FAILURES - 1)]
    statuses.append((await call(http, "GET", url, token=None))[0])
    assert statuses == [401] * MAX_FAILURES
    # From now on this address is refused, the right token included (answering it apart
    # would tell a guesser it had found one).
    for token in ("guess-x", TOKEN):
        status, headers, body = await call(http, "GET", url, token=token)
        assert status == 429, body
        assert orjson.loads(body)["error"]["code"] == "too_many_requests"
        assert 1 <= int(headers["Retry-After"]) <= 60
    assert REGISTRY.get_sample_value(METRIC, {"reason": "invalid"}) == \
        before["invalid"] + MAX_FAILURES - 1
    assert REGISTRY.get_sample_value(METRIC, {"reason": "missing"}) == before["missing"] + 1
    # The health endpoints are not the admin API: still answered.
    assert (await call(http, "GET", gateway.admin_url + "/healthz", token=None))[0] == 200
    metrics = (await call(http, "GET", gateway.admin_url + "/metrics", token=None))[2]
    assert b'gateway_admin_auth_failures_total{reason="invalid"}' in metrics


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "\uff11", "1\u00b2", "-1", "1.0", ""])
async def test_numbers_are_ascii_digits_or_422(gateway, http, limit: str) -> None:  # type: ignore[no-untyped-def]
    for path in ("/admin/keys", "/admin/accounts", "/admin/audit"):
        async with http.get(gateway.admin_url + path, params={"limit": limit},
                            headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            assert answer.status == 422, (path, limit, await answer.text())
            error = (await answer.json())["error"]
            assert error["code"] == "invalid_request" and error["message"].startswith("limit:")


@pytest.mark.parametrize("field", ["expires_in", "grace"])
async def test_durations_are_ascii_digits_or_422(gateway, http, field: str) -> None:  # type: ignore[no-untyped-def]
    base = gateway.admin_url
    account = orjson.loads((await call(http, "POST", base + "/admin/accounts",
                                       body={"name": "n"}))[2])
    status, _, body = await call(http, "POST", base + "/admin/keys",
                                 body={"account_id": account["id"]})
    key = orjson.loads(body)
    if field == "expires_in":
        status, _, body = await call(http, "POST", base + "/admin/keys",
                                     body={"account_id": account["id"], "expires_in": "\u0663d"})
    else:
        status, _, body = await call(http, "POST", base + f"/admin/keys/{key['id']}/reissue",
                                     body={"grace": "\u0663h"})
    assert status == 422, body
    assert orjson.loads(body)["error"]["message"].startswith(f"{field}:")
