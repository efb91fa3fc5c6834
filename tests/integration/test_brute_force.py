"""Brute-force protection end to end (issue 9 part 4): a real gateway with two workers on one
port, a real Redis, a real upstream. Failures from one client address pass the configured rate;
from then on that client gets 429 with Retry-After before any store lookup, on every worker,
while other clients are served."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import sign_request
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.conftest import api_key, new_key
from tests.support.keyformat import ALPHABET, make_secret
from tests.support.processes import GatewayProcess, write_config
from tests.support.redis_server import RedisServer

SCOPE = "yc.ai.vision.execute"
LIMIT = 6


def well_formed_unknown_key() -> str:
    return make_secret("".join(secrets.choice(ALPHABET) for _ in range(30)))


def start_gateway_process(tmp_path: Path, redis: RedisServer, upstream: Any, *,
                          limit: int = LIMIT, block_for: str = "3s",
                          env: dict[str, str] | None = None,
                          **sections: Any) -> GatewayProcess:
    path, port, admin_port = write_config(
        tmp_path / "gateway.yaml", redis.url,
        [{"name": "vision", "prefix": "/vision/", "upstream":
          f"http://127.0.0.1:{upstream.port}", "scopes": [SCOPE]},
         {"name": "open", "prefix": "/open/", "upstream": f"http://127.0.0.1:{upstream.port}",
          "public": True}],
        brute_force={"max_failures": limit, "window": "60s", "block_for": block_for},
        # The test client stands for two clients: itself, and one behind a trusted proxy.
        listen={"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]},
        **sections)
    # write_config chose the port; keep it (the listen section above only adds proxies).
    text = path.read_text().replace("port: 0", f"port: {port}", 1)
    path.write_text(text)
    return GatewayProcess(path, port, admin_port, env=env,
                          extra_args=("--workers", "2")).start()


@pytest.fixture
def gateway(tmp_path: Path, redis_clean: RedisServer, upstream: Any) -> Iterator[GatewayProcess]:
    process = start_gateway_process(tmp_path, redis_clean, upstream)
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


# -- issue 17, item 3 ------------------------------------------------------------------------------

BURST_LIMIT = 30  # the default brute_force.max_failures
WORKERS = 2


async def burst(url: str, client: str, attempts: int, parallel: int) -> list[int]:
    """`attempts` requests with malformed keys (refused without a lookup, so none waits on the
    store) from `client`, `parallel` at a time, each on a new connection (spread over both
    workers). The statuses, in the order they were answered."""
    statuses: list[int] = []
    queue = list(range(attempts))

    async def one_by_one() -> None:
        while queue:
            queue.pop()
            headers = {"Authorization": "Api-Key gwk_malformed", "X-Forwarded-For": client}
            async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as answer:
                statuses.append(answer.status)

    await asyncio.gather(*(one_by_one() for _ in range(parallel)))
    return statuses


async def test_a_burst_over_two_workers_admits_the_limit_not_the_limit_per_worker(
        tmp_path: Path, redis_clean: RedisServer, upstream: Any) -> None:
    """Measured before: 60 failures answered 401 with two workers before the block (each
    worker admitted the whole limit before it learnt the shared count)."""
    gateway = start_gateway_process(tmp_path, redis_clean, upstream, limit=BURST_LIMIT,
                                    block_for="60s")
    try:
        statuses = await burst(gateway.url + "/vision/x", "203.0.113.50", 300, 16)
        admitted = statuses.count(401)
        print(f"failures admitted before the block: {admitted} (limit {BURST_LIMIT}, "
              f"{WORKERS} workers)")
        assert set(statuses) == {401, 429}
        assert BURST_LIMIT <= admitted <= BURST_LIMIT + WORKERS
        # Every worker blocks the address for good once the shared count is at the limit.
        await asyncio.sleep(0.6)
        assert set(await burst(gateway.url + "/vision/x", "203.0.113.50", 20, 4)) == {429}
        # The shared count in Redis is what was admitted.
        with redis_clean.client() as direct:
            counts = [int(direct.get(name)) for name in direct.keys("gw:bf:{203.0.113.50}:count:*")]
        assert sum(counts) == admitted
    finally:
        gateway.stop()


async def test_a_blocked_address_still_serves_keys_the_worker_holds_as_valid(
        tmp_path: Path, redis_clean: RedisServer, upstream: Any) -> None:
    """Clients behind one NAT: junk keys from the address block it, yet a key the worker has
    cached as valid keeps working there, without a store lookup; junk, and valid keys the
    worker does not hold, stay blocked."""
    master_key = os.urandom(32)
    env = {"GATEWAY_MASTER_KEY": base64.b64encode(master_key).decode()}
    redis = connect(redis_clean.url, 2.0)
    try:
        service = KeyService(KeyStore(redis), secret_box=SecretBox(master_key))
        account = await service.create_account("behind-a-nat")
        _, known = await service.create_key(account_id=account.id, scopes=[SCOPE])
        _, unused = await service.create_key(account_id=account.id, scopes=[SCOPE])
        hmac_key, hmac_secret = await service.create_key(
            account_id=account.id, key_type="hmac", scopes=[SCOPE],
            expires_at=time.time() + 3600)
    finally:
        await redis.aclose()
    # Last use is written once an hour here, so that the store sees nothing of the requests.
    gateway = start_gateway_process(tmp_path, redis_clean, upstream, block_for="60s", env=env,
                                    keys={"last_used_flush": "3600s"})
    nat = "198.51.100.77"
    url = gateway.url + "/vision/x"
    try:
        # One keep-alive connection: one worker, which caches the keys it sees used.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:

            async def ask(headers: dict[str, str]) -> tuple[int, str]:
                async with http.get(url, headers={**headers, "X-Forwarded-For": nat}) as answer:
                    body = await answer.json()
                    return answer.status, (body.get("error") or {}).get("code", "")

            def signed() -> dict[str, str]:
                return sign_request("GET", url, key_id=hmac_key.id, secret=hmac_secret)

            assert (await ask(api_key(known)))[0] == 200
            assert (await ask(signed()))[0] == 200

            # Someone else behind the same address guesses keys, on other connections.
            for _ in range(LIMIT * 3):
                await get(url, well_formed_unknown_key(), nat)
            await asyncio.sleep(0.6)  # the block reached both workers
            assert (await get(url, well_formed_unknown_key(), nat))[:2] == (
                429, "too_many_requests")

            before = redis_clean.command_count()
            assert await ask(api_key(known)) == (200, "")
            assert await ask(api_key(well_formed_unknown_key())) == (429, "too_many_requests")
            assert await ask(api_key(unused)) == (429, "too_many_requests")  # never cached
            assert await ask({"Authorization": "Api-Key gwk_malformed"}) == (
                429, "too_many_requests")
            assert await ask({}) == (401, "missing_credentials")
            assert await ask(api_key(known)) == (200, "")
            assert redis_clean.command_count() == before  # nothing asked the store

            # A signed request under the cached key id passes (its nonce is claimed); a wrong
            # signature under it is refused with the block's answer.
            assert (await ask(signed()))[0] == 200
            forged = signed()
            forged["Signature"] = "sig1=:" + base64.b64encode(b"x" * 32).decode() + ":"
            assert await ask(forged) == (429, "too_many_requests")
    finally:
        gateway.stop()
