"""Master-key rotation (issue 17, item 11), on a real Redis and real gateway processes. Before,
one master key sealed every HMAC secret, so a leaked key meant reissuing every HMAC key. Now
several keys may be configured (the first encrypts, any decrypts) and `gateway master-key
reencrypt` (or `rotate`, on the embedded store) re-seals every stored secret under the newest,
while gateways serve signed requests; then the old key goes."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.client import sign_request
from gateway.errors import NotFound
from gateway.keys.masterkeys import MasterKeys, master_key_id
from gateway.keys.rotation import census, reencrypt
from gateway.keys.secrets import SecretBox, sealed_under
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.support.processes import GatewayProcess, gateway_command, write_config
from tests.support.redis_server import RedisServer

TOKEN = "rotation-test-admin-token-0123456789"
VISION = "yc.ai.vision.execute"
OLD, NEW = os.urandom(32), os.urandom(32)
OLD64, NEW64 = base64.b64encode(OLD).decode(), base64.b64encode(NEW).decode()
OLD_ID, NEW_ID = master_key_id(OLD), master_key_id(NEW)


def routes(upstream: Any) -> list[dict[str, Any]]:
    return [{"name": "vision", "prefix": "/vision/",
             "upstream": f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]}]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GATEWAY_MASTER_KEY", "GATEWAY_MASTER_KEY_FILE", "GATEWAY_REDIS_URL")}
    return {**env, **extra}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


async def acli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, env=env)


def legacy_seal(master: bytes, key_id: str, secret: str) -> str:
    """A secret as sealed before master keys had ids."""
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(master).encrypt(nonce, secret.encode(),
                                                           key_id.encode())).decode()


async def signed_status(http: aiohttp.ClientSession, url: str, key_id: str,
                        secret: str) -> int:
    headers = sign_request("GET", url, key_id=key_id, secret=secret)
    async with http.get(url, headers=headers) as answer:
        await answer.read()
        return answer.status


async def stored_sealed(redis_url: str) -> dict[str, list[str]]:
    """Every HMAC record's sealed secrets, straight from Redis."""
    redis = connect(redis_url, 2.0)
    try:
        out: dict[str, list[str]] = {}
        for key_id in await redis.smembers("gw:hmac-keys"):
            raw = orjson.loads(await redis.get(b"gw:key:" + key_id))
            out[key_id.decode()] = [raw["extra"][n] for n in ("secret", "previous_secret")
                                    if n in raw["extra"]]
        return out
    finally:
        await redis.aclose()


async def test_reencrypt_moves_every_secret_to_the_new_key_while_a_gateway_serves(
        tmp_path: Path, redis_clean: RedisServer, upstream: Any) -> None:
    # Made under the old key alone: a plain key, one reissued with a grace period (two
    # secrets), one sealed before master keys had ids, and an API key (no secret to move).
    redis = connect(redis_clean.url, 2.0)
    try:
        service = KeyService(KeyStore(redis), secret_box=SecretBox(OLD))
        account = await service.create_account("signer")
        hour = time.time() + 3600
        plain, plain_secret = await service.create_key(
            account_id=account.id, key_type="hmac", scopes=[VISION], expires_at=hour)
        reissued, first_secret = await service.create_key(
            account_id=account.id, key_type="hmac", scopes=[VISION], expires_at=hour)
        reissued, second_secret = await service.reissue_key(reissued.id, grace=600)
        legacy, legacy_secret = await service.create_key(
            account_id=account.id, key_type="hmac", scopes=[VISION], expires_at=hour)
        await service.store.replace_key(legacy, legacy.with_changes(
            extra={"secret": legacy_seal(OLD, legacy.id, legacy_secret)}))
        await service.create_key(account_id=account.id, scopes=[VISION])
    finally:
        await redis.aclose()
    signers = [(plain.id, plain_secret), (reissued.id, first_secret),
               (reissued.id, second_secret), (legacy.id, legacy_secret)]
    assert sorted(sealed_under(s) or "none" for v in (await stored_sealed(redis_clean.url))
                  .values() for s in v) == sorted(["none", OLD_ID, OLD_ID, OLD_ID])

    # Step 1 of the README's order: every gateway gets the new key first in its list.
    both = environment(GATEWAY_MASTER_KEY=f"{NEW64},{OLD64}", GATEWAY_REDIS_URL=redis_clean.url)
    config_path, port, admin_port = write_config(tmp_path / "gw.yaml", redis_clean.url,
                                                 routes(upstream))
    gateway = GatewayProcess(config_path, port, admin_port, env=both).start()
    try:
        async with aiohttp.ClientSession() as http:
            url = gateway.url + "/vision/x"
            assert [await signed_status(http, url, *s) for s in signers] == [200] * 4
            # Step 2: re-encrypt, while the gateway serves.
            done = await acli("master-key", "reencrypt", "--yes", "--json", env=both)
            assert done.returncode == 0, done.stderr
            outcome = orjson.loads(done.stdout)
            assert outcome["master_key"] == NEW_ID
            assert (outcome["reencrypted"], outcome["already_current"], outcome["deleted"],
                    outcome["undecryptable"], outcome["skipped"]) == (3, 0, 0, [], [])
            assert [await signed_status(http, url, *s) for s in signers] == [200] * 4
            async with http.get(gateway.admin_url + "/readyz") as answer:
                assert answer.status == 200
    finally:
        assert gateway.stop() == 0, gateway.log()
    sealed = await stored_sealed(redis_clean.url)
    assert {sealed_under(s) for v in sealed.values() for s in v} == {NEW_ID}
    assert len(sealed[reissued.id]) == 2  # the old secret's grace runs on, re-sealed

    # Step 3: nothing is under the old key any more, so it goes; a second run finds nothing.
    status = cli("master-key", "status", "--json", env=both)
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["keys"] == [
        {"id": NEW_ID, "role": "encrypts", "secrets": 4},
        {"id": OLD_ID, "role": "decrypts", "secrets": 0}]
    again = orjson.loads(cli("master-key", "reencrypt", "--yes", "--json", env=both).stdout)
    assert (again["reencrypted"], again["already_current"], again["passes"]) == (0, 3, 1)
    new_only = environment(GATEWAY_MASTER_KEY=NEW64)
    gateway = GatewayProcess(config_path, port, admin_port, env=new_only).start()  # readyz 200
    try:
        async with aiohttp.ClientSession() as http:
            url = gateway.url + "/vision/x"
            assert [await signed_status(http, url, *s) for s in signers] == [200] * 4
    finally:
        assert gateway.stop() == 0, gateway.log()


async def test_rotate_on_the_embedded_store_keeps_every_signed_request_verifying(
        tmp_path: Path, upstream: Any) -> None:
    data_dir = tmp_path / "data"
    config_path, port, admin_port = write_config(tmp_path / "gw.yaml", "embedded",
                                                 routes(upstream), data_dir=str(data_dir))
    env = environment(GATEWAY_ADMIN_TOKEN=TOKEN)
    # Two workers: each holds the keys its supervisor read at start, and follows the file.
    gateway = GatewayProcess(config_path, port, admin_port, env=env,
                             extra_args=("--workers", "2")).start()
    key_file = data_dir / "master.key"
    first_id = master_key_id(base64.b64decode(key_file.read_text()))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    statuses: list[int] = []
    try:
        # A connection per request: requests reach both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) \
                as http:
            async def create_hmac_key(account_id: str) -> tuple[str, str]:
                async with http.post(gateway.admin_url + "/admin/keys", headers=auth, json={
                        "account_id": account_id, "type": "hmac", "scopes": [VISION],
                        "expires_at": "2099-01-01T00:00:00Z"}) as answer:
                    assert answer.status == 201, await answer.text()
                    made = await answer.json()
                    return made["id"], made["secret"]

            async with http.post(gateway.admin_url + "/admin/accounts", headers=auth,
                                 json={"name": "signers"}) as answer:
                account_id = (await answer.json())["id"]
            signers = [await create_hmac_key(account_id) for _ in range(12)]
            url = gateway.url + "/vision/x"
            stop = asyncio.Event()

            async def keep_signing() -> None:
                while not stop.is_set():
                    for signer in signers:
                        statuses.append(await signed_status(http, url, *signer))

            signing = asyncio.ensure_future(keep_signing())
            await asyncio.sleep(0.3)
            rotated = await acli("master-key", "rotate", "--json", "--config", str(config_path),
                                 env=env)
            assert rotated.returncode == 0, rotated.stderr
            outcome = orjson.loads(rotated.stdout)
            new_id = outcome["master_key"]
            assert new_id != first_id
            assert (outcome["reencrypted"], outcome["undecryptable"]) == (12, [])
            ids = [line.split()[0] for line in key_file.read_text().splitlines()
                   if line and not line.startswith("#")]
            assert [master_key_id(base64.b64decode(i)) for i in ids] == [new_id, first_id]
            await asyncio.sleep(1.0)
            # A key made by the admin API now is sealed under the new key.
            signers.append(await create_hmac_key(account_id))
            # The old key goes once nothing is sealed under it; requests keep verifying.
            status = await acli("master-key", "status", "--json", "--config", str(config_path),
                                env=env)
            assert orjson.loads(status.stdout)["keys"] == [
                {"id": new_id, "role": "encrypts", "secrets": 13},
                {"id": first_id, "role": "decrypts", "secrets": 0}], status.stderr
            removed = await acli("master-key", "remove", first_id, "--config",
                                 str(config_path), env=env)
            assert removed.returncode == 0, removed.stderr
            await asyncio.sleep(0.5)
            stop.set()
            await signing
            async with http.get(gateway.admin_url + "/readyz") as answer:
                assert answer.status == 200, await answer.text()
        assert len(statuses) > 100 and set(statuses) == {200}, sorted(set(statuses))
    finally:
        assert gateway.stop() == 0, gateway.log()
    # Restarted with the new key alone (the file), every key still verifies.
    gateway = GatewayProcess(config_path, port, admin_port, env=env).start()
    try:
        async with aiohttp.ClientSession() as http:
            assert {await signed_status(http, gateway.url + "/vision/x", *s)
                    for s in signers} == {200}
    finally:
        assert gateway.stop() == 0, gateway.log()


async def test_parallel_reencrypts_and_concurrent_changes_lose_nothing(
        redis_clean: RedisServer) -> None:
    """Three re-encryptions at once, while other operators (holding the new key, as the
    README's order says) change descriptions, reissue and delete keys: no change is undone,
    no deleted key comes back, every secret ends under the new key and opens with it alone."""
    ring = MasterKeys((NEW, OLD))
    connections = [connect(redis_clean.url, 2.0) for _ in range(7)]
    try:
        maker = KeyService(KeyStore(connections[0]), secret_box=SecretBox(OLD))
        account = await maker.create_account("many")
        secrets: dict[str, str] = {}
        for _ in range(150):
            key, secret = await maker.create_key(account_id=account.id, key_type="hmac",
                                                 scopes=[VISION], expires_at=time.time() + 3600)
            secrets[key.id] = secret
        ids = list(secrets)
        described: dict[str, str] = {}
        deleted: set[str] = set()
        running = True

        async def describe(service: KeyService) -> None:
            n = 0
            while running:
                key_id = random.choice(ids)
                n += 1
                try:
                    await service.update_key(key_id, description=f"edit {n}")
                    described[key_id] = f"edit {n}"
                except NotFound:
                    assert key_id in deleted

        async def reissue(service: KeyService) -> None:
            while running:
                key_id = random.choice(ids)
                try:
                    _, secrets[key_id] = await service.reissue_key(key_id)
                except NotFound:
                    assert key_id in deleted

        async def delete(service: KeyService) -> None:
            for key_id in random.sample(ids, 15):
                deleted.add(key_id)  # before: a racing edit may see it gone at once
                await service.delete_key(key_id)
                await asyncio.sleep(0.005)

        editors = [asyncio.ensure_future(job(KeyService(KeyStore(redis),
                                                        secret_box=SecretBox(ring))))
                   for job, redis in ((describe, connections[1]), (reissue, connections[2]),
                                      (delete, connections[3]))]
        await asyncio.sleep(0.05)
        outcomes = await asyncio.gather(*(reencrypt(KeyStore(redis), SecretBox(ring))
                                          for redis in connections[4:]))
        running = False
        await asyncio.gather(*editors)

        for outcome in outcomes:
            assert outcome.complete and outcome.master_key == NEW_ID
        # Each stored secret was moved once, by one of the three (a reissue seals under the
        # new key, so it leaves one fewer to move); the lost races were read again.
        assert sum(o.reencrypted for o in outcomes) <= len(ids)
        assert sum(o.conflicts for o in outcomes) > 0

        store = KeyStore(connections[0])
        new_only = SecretBox(NEW)
        found = await census(store, new_only)
        assert found.under_older_keys(new_only) == 0
        assert found.hmac_keys == len(ids) - len(deleted)
        for key_id in ids:
            record = await store.get_key(key_id)
            if key_id in deleted:
                assert record is None
                continue
            assert record is not None
            assert sealed_under(record.extra["secret"]) == NEW_ID
            assert new_only.open(key_id, record.extra["secret"]) == secrets[key_id]
            assert record.description == described.get(key_id, "")
    finally:
        for redis in connections:
            await redis.aclose()


@pytest.mark.parametrize(("setting", "message"), [
    ({"GATEWAY_MASTER_KEY": f"{NEW64},{OLD64[:-8]}"},
     "GATEWAY_MASTER_KEY: key 2 of 2: must decode to 32 bytes"),
    ({"GATEWAY_MASTER_KEY": f"{NEW64}, ,{OLD64}"}, "GATEWAY_MASTER_KEY: key 2 of 3: is empty"),
    ({"GATEWAY_MASTER_KEY_FILE": "{tmp}/keys"}, "{tmp}/keys: line 3: is not base64"),
])
def test_a_malformed_master_key_list_is_a_config_error(
        tmp_path: Path, redis_clean: RedisServer, setting: dict[str, str], message: str) -> None:
    (tmp_path / "keys").write_text(f"# newest first\n{NEW64}\n{OLD64}$\n")
    env = environment(GATEWAY_REDIS_URL=redis_clean.url,
                      **{k: v.replace("{tmp}", str(tmp_path)) for k, v in setting.items()})
    for args in (("master-key", "status"), ("keys", "list")):
        result = cli(*args, env=env)
        assert result.returncode != 0
        assert message.replace("{tmp}", str(tmp_path)) in result.stderr, result.stderr
        assert NEW64 not in result.stderr and OLD64[:20] not in result.stderr


def test_reencrypt_asks_first_when_it_cannot_know_what_the_gateways_hold(
        redis_clean: RedisServer) -> None:
    env = environment(GATEWAY_REDIS_URL=redis_clean.url, GATEWAY_MASTER_KEY=f"{NEW64},{OLD64}")
    result = cli("master-key", "reencrypt", env=env)
    assert result.returncode != 0
    assert f"sealed under master key {NEW_ID}" in result.stderr
    assert "must hold that key already" in result.stderr and "--yes" in result.stderr
    # And a key list given by the environment is not the CLI's to change.
    rotate = cli("master-key", "rotate", env=env)
    assert rotate.returncode != 0 and "put the new key first in GATEWAY_MASTER_KEY" in \
        rotate.stderr


async def test_a_key_file_through_the_readme_steps_and_secrets_no_key_opens(
        tmp_path: Path, redis_clean: RedisServer) -> None:
    other = os.urandom(32)
    redis = connect(redis_clean.url, 2.0)
    try:
        service = KeyService(KeyStore(redis), secret_box=SecretBox(OLD))
        account = await service.create_account("a")
        made = [await service.create_key(account_id=account.id, key_type="hmac",
                                         expires_at=time.time() + 3600) for _ in range(3)]
        movable, foreign, foreign_legacy = (key for key, _ in made)
        # Two secrets sealed under a key this deployment does not hold (one before ids).
        await service.store.replace_key(foreign, foreign.with_changes(
            extra={"secret": SecretBox(other).seal(foreign.id, "x")}))
        await service.store.replace_key(foreign_legacy, foreign_legacy.with_changes(
            extra={"secret": legacy_seal(other, foreign_legacy.id, "x")}))
        key_file = tmp_path / "master-keys"
        env = environment(GATEWAY_REDIS_URL=redis_clean.url,
                          GATEWAY_MASTER_KEY_FILE=str(key_file))

        key_file.write_text(f"{OLD64}\n{NEW64}  # step 1: the new key last\n")
        status = orjson.loads((await acli("master-key", "status", "--json", env=env)).stdout)
        assert status["keys"] == [
            {"id": OLD_ID, "role": "encrypts", "secrets": 1},
            {"id": NEW_ID, "role": "decrypts", "secrets": 0},
            {"id": master_key_id(other), "role": "missing", "secrets": 1},
            {"id": "?", "role": "missing", "secrets": 1}]
        assert status["source"] == f"GATEWAY_MASTER_KEY_FILE ({key_file})"

        key_file.write_text(f"{NEW64}\n{OLD64}\n")  # step 2: first
        before = [(await service.store.read_key(k.id) or (None, b""))[1]
                  for k in (foreign, foreign_legacy)]
        refused = await acli("master-key", "remove", OLD_ID, env=env)
        assert refused.returncode != 0
        assert f"1 stored secret(s) are still sealed under master key {OLD_ID}" in \
            refused.stderr
        moved = await acli("master-key", "reencrypt", "--yes", "--json", env=env)
        assert moved.returncode == 1
        outcome = orjson.loads(moved.stdout)
        assert (outcome["reencrypted"], outcome["undecryptable"]) == \
            (1, sorted([foreign.id, foreign_legacy.id]))
        assert foreign.id in moved.stderr and "keep the older keys" in moved.stderr
        # Left exactly as they were.
        assert [(await service.store.read_key(k.id) or (None, b""))[1]
                for k in (foreign, foreign_legacy)] == before

        removed = await acli("master-key", "remove", OLD_ID, env=env)
        assert removed.returncode == 0, removed.stderr
        lines = [line for line in key_file.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        assert lines == [f"{NEW64}  # key id {NEW_ID}"]
        assert SecretBox(NEW).open(movable.id, (await service.get_key(movable.id))
                                   .extra["secret"]) == made[0][1]
    finally:
        await redis.aclose()
