"""The master key (issue 17, item 9). The embedded store's key file exists from the first start,
so an HMAC key made on a fresh store (CLI, admin API, hence the page) works at once against the
running gateway; it used to be written by the first `keys create --type hmac`, after the gateway
had started without it: signed requests then got 503 until a restart and the API answered 409.
And a gateway whose master key does not open the stored HMAC secrets says so at start, in the
log and in /readyz, instead of answering 503 to each signed request without a word."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.client import sign_request
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.support.processes import GatewayProcess, gateway_command, write_config
from tests.support.redis_server import RedisServer

TOKEN = "master-key-test-admin-token-0123456789"
VISION = "yc.ai.vision.execute"


def routes(upstream: Any) -> list[dict[str, Any]]:
    return [{"name": "vision", "prefix": "/vision/",
             "upstream": f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]}]


def without_master_key() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GATEWAY_MASTER_KEY"}


async def signed_get(http: aiohttp.ClientSession, url: str, key_id: str,
                     secret: str) -> tuple[int, Any]:
    headers = sign_request("GET", url, key_id=key_id, secret=secret)
    async with http.get(url, headers=headers) as answer:
        return answer.status, await answer.read()


async def test_a_fresh_embedded_store_has_its_master_key_from_the_first_start(
        tmp_path: Path, upstream: Any) -> None:
    data_dir = tmp_path / "data"
    config_path, port, admin_port = write_config(tmp_path / "gateway.yaml", "embedded",
                                                 routes(upstream), data_dir=str(data_dir))
    env = {**without_master_key(), "GATEWAY_ADMIN_TOKEN": TOKEN}
    gateway = GatewayProcess(config_path, port, admin_port, env=env).start()
    try:
        key_file = data_dir / "master.key"
        assert key_file.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.admin_url + "/admin/accounts", json={"name": "a"},
                                 headers=auth) as answer:
                assert answer.status == 201
                account = await answer.json()
            # The admin API (and the page, which calls it) on the fresh store: was 409.
            async with http.post(gateway.admin_url + "/admin/keys", headers=auth, json={
                    "account_id": account["id"], "type": "hmac", "scopes": [VISION],
                    "expires_at": datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
                    }) as answer:
                assert answer.status == 201, await answer.text()
                from_api = await answer.json()
            url = gateway.url + "/vision/x"
            assert (await signed_get(http, url, from_api["id"], from_api["secret"]))[0] == 200
            # The CLI, on the store of the running gateway: works at once (was 503 until a
            # restart).
            made = await asyncio.to_thread(
                subprocess.run,
                gateway_command("keys", "create", "--config", str(config_path), "--account",
                                account["id"], "--type", "hmac", "--scope", VISION,
                                "--expires-in", "1d", "--json"),
                capture_output=True, text=True, timeout=60, env=env)
            assert made.returncode == 0, made.stderr
            from_cli = orjson.loads(made.stdout)
            status, body = await signed_get(http, url, from_cli["id"], from_cli["secret"])
            assert status == 200, body
    finally:
        assert gateway.stop() == 0, gateway.log()


async def test_a_master_key_that_does_not_open_the_stored_secrets_is_reported(
        tmp_path: Path, redis_clean: RedisServer, upstream: Any) -> None:
    made_with = os.urandom(32)
    redis = connect(redis_clean.url, 2.0)
    try:
        service = KeyService(KeyStore(redis), secret_box=SecretBox(made_with))
        account = await service.create_account("signer")
        key, secret = await service.create_key(account_id=account.id, key_type="hmac",
                                                scopes=[VISION], expires_at=time.time() + 3600)
    finally:
        await redis.aclose()
    config_path, port, admin_port = write_config(tmp_path / "gateway.yaml", redis_clean.url,
                                                 routes(upstream))
    other = base64.b64encode(os.urandom(32)).decode()
    gateway = GatewayProcess(config_path, port, admin_port,
                             env={**without_master_key(), "GATEWAY_MASTER_KEY": other})
    try:
        # It starts (API keys keep working) but never says ready.
        try:
            gateway.start(timeout=4)
            raise AssertionError("/readyz said ready with a master key that opens nothing")
        except RuntimeError as exc:
            assert "did not come up" in str(exc)
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.admin_url + "/readyz") as answer:
                assert answer.status == 503
                reason = (await answer.json())["reason"]
            assert "master key" in reason and key.id in reason, reason
            # API keys still work; signed requests say why they cannot be checked.
            status, body = await signed_get(http, gateway.url + "/vision/x", key.id, secret)
            assert status == 503 and b"decrypt" in body, body
        log = gateway.log()
        assert "master key" in log and "does not decrypt" in log, log
        assert log.count("does not decrypt") <= 3  # said at start (and once more), not per request
    finally:
        gateway.stop()
