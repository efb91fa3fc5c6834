"""Brute-force protection end to end (issue 9 part 4): a real gateway with two workers on one
port, a real Redis, a real upstream. Failures from one client address pass the configured rate;
from then on that client gets 429 with Retry-After before any store lookup, on every worker,
while other clients are served."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.keys.service import KeyService
from tests.conftest import api_key, new_key
from tests.support.keyformat import ALPHABET, make_secret
from tests.support.processes import GatewayProcess, write_config
from tests.support.redis_server import RedisServer

SCOPE = "yc.ai.vision.execute"
LIMIT = 6


def well_formed_unknown_key() -> str:
    return make_secret("".join(secrets.choice(ALPHABET) for _ in range(30)))


@pytest.fixture
def gateway(tmp_path: Path, redis_clean: RedisServer, upstream: Any) -> Iterator[GatewayProcess]:
    path, port, admin_port = write_config(
        tmp_path / "gateway.yaml", redis_clean.url,
        [{"name": "vision", "prefix": "/vision/", "upstream":
          f"http://127.0.0.1:{upstream.port}", "scopes": [SCOPE]},
         {"name": "open", "prefix": "/open/", "upstream": f"http://127.0.0.1:{upstream.port}",
          "public": True}],
        brute_force={"max_failures": LIMIT, "window": "60s", "block_for": "3s"},
        # The test client stands for two clients: itself, and one behind a trusted proxy.
        listen={"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]})
    # write_config chose the port; keep it (the listen section above only adds proxies).
    text = path.read_text().replace("port: 0", f"port: {port}", 1)
    path.write_text(text)
    process = GatewayProcess(path, port, admin_port, extra_args=("--workers", "2")).start()
    yield process
    process.stop()


async def get(url: str, secret: str, client: str) -> tuple[int, str, str | None]:
    # A new connection each time, so SO_REUSEPORT spreads the requests over both workers.
    headers = {**api_key(secret), "X-Forwarded-For": client}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        body = await response.json()
        return (response.status, (body.get("error") or {}).get("code", ""),
                response.headers.get("Retry-After"))


async def test_failures_past_the_limit_get_429_before_any_lookup_on_every_worker(
        gateway: GatewayProcess, redis_clean: RedisServer, key_service: KeyService) -> None:
    _, secret, _ = await new_key(key_service, (SCOPE,))
    url = gateway.url + "/vision/x"
    attacker, bystander = "203.0.113.9", "198.51.100.20"

    answers = [await get(url, well_formed_unknown_key(), attacker) for _ in range(LIMIT)]
    assert [a[:2] for a in answers] == [(401, "invalid_credentials")] * LIMIT

    # Past the limit: refused on both workers (new connections land on either), even with a
    # valid key, and without a single store command.
    await asyncio.sleep(0.6)  # the counts' flush and the block announcement
    before = redis_clean.command_count()
    refused = [await get(url, key, attacker)
               for key in [well_formed_unknown_key() for _ in range(15)] + [secret]]
    assert redis_clean.command_count() == before
    assert {a[:2] for a in refused} == {(429, "too_many_requests")}
    assert all(a[2] is not None and 1 <= int(a[2]) <= 3 for a in refused)

    # Another client address is unaffected, and so is a public route.
    assert (await get(url, secret, bystander))[0] == 200
    async with aiohttp.ClientSession() as http, http.get(
            gateway.url + "/open/x", headers={"X-Forwarded-For": attacker}) as response:
        assert response.status == 200

    # The block ends after block_for; the attacker's valid key works again.
    deadline = time.monotonic() + 10
    while (status := (await get(url, secret, attacker))[0]) == 429:
        assert time.monotonic() < deadline, "still blocked long after block_for"
        await asyncio.sleep(0.3)
    assert status == 200


async def test_missing_credentials_and_forbidden_scopes_are_not_counted(
        gateway: GatewayProcess, key_service: KeyService) -> None:
    _, other_scope, _ = await new_key(key_service, ("yc.other",))
    url = gateway.url + "/vision/x"
    client = "203.0.113.10"
    for _ in range(LIMIT * 2):
        async with aiohttp.ClientSession() as http, http.get(
                url, headers={"X-Forwarded-For": client}) as response:
            assert response.status == 401
        assert (await get(url, other_scope, client))[:2] == (403, "insufficient_scope")
    _, secret, _ = await new_key(key_service, (SCOPE,))
    assert (await get(url, secret, client))[0] == 200
