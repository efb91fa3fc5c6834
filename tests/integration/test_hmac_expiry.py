"""An HMAC key keeps its mandatory expiry (issue 17, item 10; SPEC §1): it can be moved, never
removed, through the service, the admin API (and so the page) and the CLI. Its description can
change, as an API key's can."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.config import build_config
from gateway.errors import InvalidRequest
from gateway.keys.model import HMAC_KEY, KeyRecord
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.conftest import admin_json
from tests.support.processes import gateway_command
from tests.support.redis_server import RedisServer

MASTER = os.urandom(32)
MASTER_B64 = base64.b64encode(MASTER).decode()
TOKEN = "hmac-expiry-admin-token"
DAY = 86400.0


@pytest.fixture
async def service(redis_clean: RedisServer) -> AsyncIterator[KeyService]:
    redis = connect(redis_clean.url, 2.0)
    yield KeyService(KeyStore(redis), secret_box=SecretBox(MASTER))
    await redis.aclose()


async def hmac_key(service: KeyService) -> KeyRecord:
    account = await service.create_account("signer")
    key, _ = await service.create_key(account_id=account.id, key_type=HMAC_KEY,
                                      expires_at=time.time() + DAY, description="first")
    return key


def drop_expiry(server: RedisServer, key_id: str) -> None:
    """An HMAC key without an expiry, as the old `--no-expiry` left one."""
    client = server.client()
    record = orjson.loads(client.get(f"gw:key:{key_id}"))
    record["expires_at"] = None
    client.set(f"gw:key:{key_id}", orjson.dumps(record))


# -- the service ---------------------------------------------------------------------------------

async def test_the_service_refuses_to_remove_an_hmac_keys_expiry(service: KeyService) -> None:
    key = await hmac_key(service)
    for attempt in (lambda: service.update_key(key.id, expires_at=None),
                    lambda: service.update_key(key.id, expires_at=None, description="second"),
                    lambda: service.set_expiry(key.id, None)):
        with pytest.raises(InvalidRequest) as exc:
            await attempt()
        assert exc.value.field == "expires_at"
        assert "HMAC keys need an expiry" in str(exc.value)
    stored = await service.get_key(key.id)
    assert stored.expires_at == key.expires_at and stored.description == "first"
    actions = [e["action"] for e in (await service.audit()).items]
    assert "key.update" not in actions


async def test_an_hmac_keys_expiry_moves_and_its_description_changes(
        service: KeyService) -> None:
    key = await hmac_key(service)
    later = time.time() + 30 * DAY
    moved = await service.update_key(key.id, expires_at=later)
    assert moved.expires_at == later
    described = await service.update_key(key.id, description="billing job")
    assert described.description == "billing job" and described.expires_at == later
    # An API key may still lose its expiry: SPEC §1 makes it optional there.
    api_key, _ = await service.create_key(account_id=key.account_id,
                                          expires_at=time.time() + DAY)
    assert (await service.update_key(api_key.id, expires_at=None)).expires_at is None


async def test_an_hmac_key_left_without_expiry_gets_one_with_its_next_change(
        service: KeyService, redis_clean: RedisServer) -> None:
    key = await hmac_key(service)
    drop_expiry(redis_clean, key.id)
    with pytest.raises(InvalidRequest) as exc:
        await service.update_key(key.id, description="second")
    assert exc.value.field == "expires_at" and "has none" in str(exc.value)
    later = time.time() + DAY
    fixed = await service.update_key(key.id, expires_at=later, description="second")
    assert fixed.expires_at == later and fixed.description == "second"


# -- the admin API (the page's edit dialog sends these same PATCH bodies) -----------------------

@pytest.fixture
async def gateway(redis_clean, start_gateway):  # type: ignore[no-untyped-def]
    data = {"listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0, "token": TOKEN},
            "redis": {"url": redis_clean.url}, "routes": []}
    return await start_gateway(build_config(data, "<test>", {"GATEWAY_MASTER_KEY": MASTER_B64}))


async def admin(http: Any, gateway: Any, method: str, path: str, body: Any,
                expect: int) -> Any:
    return await admin_json(http, gateway.admin_url, TOKEN, method, path, body, expect)


async def test_patch_with_a_null_expiry_is_422_for_an_hmac_key(gateway, http) -> None:
    account = await admin(http, gateway, "POST", "/admin/accounts", {"name": "h"}, 201)
    key = await admin(http, gateway, "POST", "/admin/keys",
                      {"account_id": account["id"], "type": "hmac", "expires_in": "1d",
                       "description": "first"}, 201)
    path = f"/admin/keys/{key['id']}"
    for body in ({"expires_at": None},
                 # The page's edit dialog with "No expiry" chosen sends both fields.
                 {"expires_at": None, "description": "second"}):
        error = await admin(http, gateway, "PATCH", path, body, 422)
        assert error["error"]["code"] == "invalid_request"
        assert error["error"]["message"].startswith("expires_at: HMAC keys need an expiry")
    shown = await admin(http, gateway, "GET", path, None, 200)
    assert shown["expires_at"] == key["expires_at"] and shown["description"] == "first"

    changed = await admin(http, gateway, "PATCH", path, {"description": "second"}, 200)
    assert changed["description"] == "second" and changed["expires_at"] == key["expires_at"]
    changed = await admin(http, gateway, "PATCH", path, {"expires_at": "2099-01-01T00:00:00Z",
                                                         "description": "third"}, 200)
    assert changed["expires_at"] == "2099-01-01T00:00:00Z" and changed["description"] == "third"


# -- the CLI -------------------------------------------------------------------------------------

def cli(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    env.update(GATEWAY_REDIS_URL=server.url, GATEWAY_MASTER_KEY=MASTER_B64)
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60,
                          env=env)


def test_keys_update_no_expiry_is_refused_for_an_hmac_key(redis_clean: RedisServer) -> None:
    account = json.loads(cli(redis_clean, "accounts", "create", "h", "--json").stdout)
    created = cli(redis_clean, "keys", "create", "--account", account["id"], "--type", "hmac",
                  "--expires-in", "1d", "--json")
    key = json.loads(created.stdout)
    refused = cli(redis_clean, "keys", "update", key["id"], "--no-expiry")
    assert refused.returncode != 0, refused.stdout
    assert "expires_at: HMAC keys need an expiry" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    shown = json.loads(cli(redis_clean, "keys", "show", key["id"], "--json").stdout)
    assert shown["expires_at"] == key["expires_at"]

    described = cli(redis_clean, "keys", "update", key["id"], "--description", "nightly job",
                    "--json")
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["description"] == "nightly job"
