"""Bulk import (issue 19): `gateway keys import` as an operator runs it, on a real Redis, and
the imported keys used through a real gateway with their old secrets."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.keys import importing
from gateway.keys.store import KeyStore
from gateway.store.client import GatedCluster
from tests.conftest import api_key, make_config
from tests.integration.test_cli_keys import cli, failed, ok_json
from tests.support.processes import gateway_command
from tests.support.redis_server import RedisServer
from tests.support.redis_topology import ClusterTopology, topology_binaries_missing

KONG_SECRET = "kong-7f3a9c1e5b2d4f6a8c0e"
HASHED_SECRET = "only-the-hash-was-kept-1"
ADMIN_TOKEN = "import-admin-token"


def lines() -> list[dict[str, Any]]:
    return [
        {"account": "billing", "secret": KONG_SECRET, "scopes": ["a.b"],
         "expires_at": "2099-01-01T00:00:00Z", "description": "from Kong"},
        {"account": "billing", "secret_sha256": hashlib.sha256(HASHED_SECRET.encode()).hexdigest(),
         "scopes": ["a.*"], "expires_at": None},
        {"account": "search", "secret": "search-team-key-0001", "scopes": ["c.d"],
         "expires_at": 4070908800},
    ]


def write_lines(path: Path, rows: list[dict[str, Any]], *extra: bytes) -> Path:
    path.write_bytes(b"\n".join([orjson.dumps(r) for r in rows] + list(extra)) + b"\n")
    return path


def keys_in(server: RedisServer) -> list[str]:
    with server.client() as client:
        return sorted(n.decode() for n in client.scan_iter("gw:key:*"))


async def test_imported_keys_authenticate_with_their_old_secrets(
        redis_clean, upstream, start_gateway, http, tmp_path) -> None:
    source = write_lines(tmp_path / "keys.jsonl", lines())
    report = ok_json(cli(redis_clean, "keys", "import", str(source), "--json"))
    assert report == {"created": 3, "unchanged": 0, "conflicting": 0, "accounts_created": 2,
                      "conflicts": []}
    with redis_clean.client() as client:
        everything = b"".join(client.dump(n) or b"" for n in client.scan_iter("*"))
    assert KONG_SECRET.encode() not in everything  # hashed on the way in, never stored

    routes = [{"name": "svc", "prefix": "/svc/", "upstream": f"http://127.0.0.1:{upstream.port}",
               "strip_prefix": True, "scopes": ["a.b"]}]
    # By default a secret that is not a gwk_ key is refused by its shape, with no lookup.
    strict = await start_gateway(make_config(redis_clean.url, routes))
    async with http.get(strict.url + "/svc/x", headers=api_key(KONG_SECRET)) as response:
        assert response.status == 401
        assert (await response.json())["error"]["message"] == "malformed API key"
    gateway = await start_gateway(make_config(redis_clean.url, routes,
                                              keys={"accept_imported": True}))
    for secret, status in [(KONG_SECRET, 200), (HASHED_SECRET, 200),
                           ("search-team-key-0001", 403), ("not-imported-key-1", 401)]:
        async with http.get(gateway.url + "/svc/x", headers=api_key(secret)) as response:
            assert response.status == status, (secret, await response.text())

    # A second run changes nothing and says so.
    again = ok_json(cli(redis_clean, "keys", "import", str(source), "--json"))
    assert again == {"created": 0, "unchanged": 3, "conflicting": 0, "accounts_created": 0,
                     "conflicts": []}
    assert len(keys_in(redis_clean)) == 3


def test_a_bad_line_imports_nothing_and_every_bad_line_is_named(redis_clean, tmp_path) -> None:
    rows = lines()
    rows[1] = {**rows[1], "secret_sha256": "abc"}
    source = write_lines(tmp_path / "keys.jsonl", rows, b'{"account": "x"}')
    failed(cli(redis_clean, "keys", "import", str(source)),
           "line 2: secret_sha256: not 64 hex digits",
           "line 4: give exactly one of secret and secret_sha256",
           "nothing was written")
    assert keys_in(redis_clean) == []
    with redis_clean.client() as client:
        assert not list(client.scan_iter("gw:account:*"))


def test_stdin_an_existing_account_by_id_and_conflicts(redis_clean) -> None:
    account = ok_json(cli(redis_clean, "accounts", "create", "ops", "--json"))
    first = orjson.dumps({"account": account["id"], "secret": KONG_SECRET, "scopes": ["a.b"]})
    run = subprocess.run(gateway_command("keys", "import", "-", "--json"), input=first,
                         capture_output=True, timeout=60,
                         env={**os.environ, "GATEWAY_REDIS_URL": redis_clean.url})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["created"] == 1
    # The same secret with other scopes: left as it is, reported by line.
    changed = orjson.dumps({"account": account["id"], "secret": KONG_SECRET, "scopes": ["x.y"]})
    run = subprocess.run(gateway_command("keys", "import", "-"), input=b"\n" + changed,
                         capture_output=True, timeout=60,
                         env={**os.environ, "GATEWAY_REDIS_URL": redis_clean.url})
    assert run.returncode == 0, run.stderr
    assert b"created 0, unchanged 0, conflicting 1" in run.stdout
    assert b"line 2: the secret is key ak_" in run.stderr
    keys = ok_json(cli(redis_clean, "keys", "show", keys_in(redis_clean)[0][len("gw:key:"):],
                       "--json"))
    assert keys["scopes"] == ["a.b"] and keys["account_id"] == account["id"]


async def test_the_writer_in_batches_and_a_stale_pointer(key_service) -> None:
    store = key_service.store
    rows = [orjson.dumps({"account": f"acct-{i % 3}", "secret": f"bulk-secret-{i:06d}"})
            for i in range(2500)]
    items = importing.parse_lines(rows)
    settled: list[int] = []
    report = await importing.import_keys(store, items, batch=1000, progress=settled.append)
    assert (report.created, report.accounts_created, settled) == (2500, 3, [1000, 1000, 500])
    assert await store.redis.zcard("gw:keys") == 2500
    # A pointer whose record is gone (a half-finished delete) does not block a re-import.
    victim = await store.key_id_for_secret(items[0].secret_hash)
    assert victim is not None
    await store.redis.delete("gw:key:" + victim)
    report = await importing.import_keys(store, items, batch=1000,
                                         clock=lambda: time.time())
    assert (report.created, report.unchanged, report.accounts_created) == (1, 2499, 0)
    revived = await store.key_id_for_secret(items[0].secret_hash)
    assert revived is not None and revived != victim
    assert (await store.get_key(revived)) is not None


# -- POST /admin/keys/import ---------------------------------------------------------------------

async def test_the_admin_api_imports_and_names_bad_lines(redis_clean, upstream, start_gateway,
                                                        http) -> None:
    gateway = await start_gateway(make_config(
        redis_clean.url,
        [{"name": "svc", "prefix": "/svc/", "upstream": f"http://127.0.0.1:{upstream.port}",
          "scopes": ["a.b"]}],
        admin={"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN}))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}",
               "Content-Type": "application/x-ndjson"}
    url = gateway.admin_url + "/admin/keys/import"
    body = b"\n".join(orjson.dumps(r) for r in lines())

    bad = body + b'\n{"account": "x", "secret": "short"}\n[]'
    async with http.post(url, data=bad, headers=headers) as response:
        assert response.status == 422
        error = (await response.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["lines"] == ["line 4: secret: must be a string of 8 to 512 characters",
                              "line 5: not a JSON object"]
    assert keys_in(redis_clean) == []

    for expected in ({"created": 3, "unchanged": 0, "accounts_created": 2},
                     {"created": 0, "unchanged": 3, "accounts_created": 0}):
        async with http.post(url, data=body, headers=headers) as response:
            assert response.status == 200
            report = await response.json()
        assert report == {**expected, "conflicting": 0, "conflicts": [],
                          "note": importing.IMPORTED_NOTE.format(count=3)}
    async with http.get(gateway.url + "/svc/x", headers=api_key(KONG_SECRET)) as response:
        assert response.status == 401  # until keys.accept_imported is set
    config = make_config(redis_clean.url, [
        {"name": "svc", "prefix": "/svc/", "upstream": f"http://127.0.0.1:{upstream.port}",
         "scopes": ["a.b"]}], keys={"accept_imported": True},
        admin={"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN})
    accepting = await start_gateway(config)
    async with http.post(accepting.admin_url + "/admin/keys/import", data=body,
                         headers=headers) as response:
        assert await response.json() == {"created": 0, "unchanged": 3, "accounts_created": 0,
                                         "conflicting": 0, "conflicts": []}
    async with http.get(accepting.url + "/svc/x", headers=api_key(KONG_SECRET)) as response:
        assert response.status == 200
    async with http.post(url, data=body) as response:  # no token
        assert response.status == 401


# -- gateway import kong -------------------------------------------------------------------------

KONG_DUMP = """
_format_version: "3.0"
consumers:
- username: alice
  keyauth_credentials:
  - key: alice-kong-key-01
  acls:
  - group: vision-users
  - group: legacy
- username: bob
  keyauth_credentials:
  - key: bob-kong-key-0001
"""


async def test_a_kong_dump_imports_and_its_keys_authenticate(redis_clean, upstream,
                                                            start_gateway, http,
                                                            tmp_path) -> None:
    dump = tmp_path / "kong.yaml"
    dump.write_text(KONG_DUMP)
    args = ("import", "kong", str(dump), "--acl-scope", "vision-users=a.b")
    dry = cli(redis_clean, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 key(s) found (dry run: nothing written)" in dry.stdout
    assert keys_in(redis_clean) == []

    done = cli(redis_clean, *args)
    assert done.returncode == 0, done.stderr
    assert "created 2, unchanged 0, conflicting 0; accounts created 2" in done.stdout
    assert "consumer alice: ACL group 'legacy' has no scope mapping" in done.stderr
    # The CLI's config does not accept imported secrets yet: it says what to set.
    assert ("note: 2 imported secret(s) are not gateway keys" in done.stderr
            and "keys.accept_imported: true" in done.stderr)

    # As Kong's key-auth reads them: an `apikey` header (or `?apikey=`, opted in).
    gateway = await start_gateway(make_config(redis_clean.url, [
        {"name": "svc", "prefix": "/svc/", "upstream": f"http://127.0.0.1:{upstream.port}",
         "scopes": ["a.b"], "key_locations": ["header:apikey", "query:apikey"]}],
        keys={"accept_imported": True}))
    for secret, status in [("alice-kong-key-01", 200), ("bob-kong-key-0001", 403)]:
        async with http.get(gateway.url + "/svc/x", headers={"apikey": secret}) as response:
            assert response.status == status, await response.text()
    async with http.get(gateway.url + "/svc/x?apikey=alice-kong-key-01&q=1") as response:
        assert response.status == 200, await response.text()
        seen = await response.json()
        assert seen["query"] == "q=1" and "apikey" not in seen["headers"]

    again = ok_json(cli(redis_clean, *args, "--json"))
    assert (again["created"], again["unchanged"]) == (0, 2)


def test_a_kong_key_that_cannot_be_imported_names_its_consumer(redis_clean, tmp_path) -> None:
    dump = tmp_path / "kong.yaml"
    dump.write_text("consumers:\n- username: eve\n  keyauth_credentials:\n  - key: short\n")
    failed(cli(redis_clean, "import", "kong", str(dump)),
           "consumer eve (key-auth credential 1): secret: must be a string of 8 to 512")
    assert keys_in(redis_clean) == []


# -- Redis Cluster -------------------------------------------------------------------------------

@pytest.mark.slow
async def test_import_on_a_redis_cluster() -> None:
    missing = topology_binaries_missing()
    if missing:
        pytest.skip(missing)
    topology = ClusterTopology().start()
    try:
        host, _, port = topology.masters()[0].rpartition(":")
        client = GatedCluster(host=host, port=int(port), socket_timeout=5)
        await client.initialize()
    except BaseException:
        topology.close()
        raise
    try:
        store = KeyStore(client)
        rows = [orjson.dumps({"account": f"acct-{i % 4}", "secret": f"cluster-secret-{i:05d}",
                              "scopes": ["a.b"]}) for i in range(600)]
        items = importing.parse_lines(rows)
        report = await importing.import_keys(store, items, batch=250)
        assert (report.created, report.accounts_created) == (600, 4)
        again = await importing.import_keys(store, items, batch=250)
        assert (again.created, again.unchanged, again.conflicting) == (0, 600, 0)
        for item in items[:50]:
            key_id = await store.key_id_for_secret(item.secret_hash)
            assert key_id is not None
            record = await store.get_key(key_id)
            assert record is not None and record.secret_hash == item.secret_hash
        # The records spread over the masters: nothing pinned to one slot.
        counts = []
        for address in topology.masters():
            with topology.client_for(address) as node:
                counts.append(sum(1 for _ in node.scan_iter("gw:key:*", count=1000)))
        assert sum(counts) == 600 and min(counts) > 0
    finally:
        await client.aclose()
        topology.close()


def test_a_progress_bar_on_a_terminal_only(redis_clean, tmp_path) -> None:
    source = write_lines(tmp_path / "keys.jsonl", lines())
    env = {**os.environ, "GATEWAY_REDIS_URL": redis_clean.url}
    env.pop("GATEWAY_CONFIG", None)
    controller, terminal = pty.openpty()
    try:
        run = subprocess.run(gateway_command("keys", "import", str(source)),
                             stdout=subprocess.PIPE, stderr=terminal, env=env, timeout=60)
        os.close(terminal)
        shown = os.read(controller, 65536)
    finally:
        os.close(controller)
    assert run.returncode == 0
    assert b"importing" in shown and b"100%" in shown
    assert b"created 3" in run.stdout and b"importing" not in run.stdout
    piped = cli(redis_clean, "keys", "import", str(source))
    assert "importing" not in piped.stderr and "unchanged 3" in piped.stdout


async def test_an_unknown_account_id_is_refused_and_nothing_written(key_service) -> None:
    store = key_service.store
    rows = [orjson.dumps({"account": "new-team", "secret": "first-secret-01"}),
            orjson.dumps({"account": "acc_0123456789abcdef", "secret": "second-secret-1"})]
    try:
        await importing.import_keys(store, importing.parse_lines(rows))
    except importing.BadImport as exc:
        assert exc.problems == ["line 2: account: no account with id 'acc_0123456789abcdef'"]
    else:
        raise AssertionError("imported")
    assert await store.redis.dbsize() == 0


async def test_a_pointer_to_a_record_that_no_longer_names_the_secret_is_stale(
        key_service) -> None:
    store = key_service.store
    account = await key_service.create_account("team")
    key, _ = await key_service.create_key(account_id=account.id, scopes=("a.b",))
    items = importing.parse_lines([orjson.dumps({"account": account.id,
                                                 "secret": "reused-secret-01"})])
    # A pointer left behind to a live record that names another secret.
    await store.redis.set("gw:secret:" + items[0].secret_hash, key.id)
    report = await importing.import_keys(store, items)
    assert (report.created, report.conflicting) == (1, 0)
    key_id = await store.key_id_for_secret(items[0].secret_hash)
    assert key_id != key.id
    # Reissued with a grace period: the old secret is still the old key's, a conflict.
    reissued_old = await key_service.create_key(account_id=account.id)
    old_secret = reissued_old[1]
    await key_service.reissue_key(reissued_old[0].id, grace=3600)
    clash = await importing.import_keys(store, importing.parse_lines(
        [orjson.dumps({"account": account.id, "secret": old_secret})]))
    assert clash.conflicting == 1
    assert "the secret is the old secret of key" in clash.conflicts[0]
