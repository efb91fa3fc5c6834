"""The rest of the management CLI (SPEC §8) as an operator runs it: `accounts list/show/update/
delete`, `keys list/update/delete/reissue` and `audit list`, as real subprocesses on a real Redis,
against a real gateway where a key must be used."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway.auth.apikey import hash_secret
from tests.conftest import api_key, make_config
from tests.integration.test_cli_keys import SECRET, failed, ok_json, parse_time
from tests.support.processes import cli_with_terminal, gateway_command
from tests.support.redis_server import RedisServer

POLL = 4.0  # generous bound for a change to show at a running gateway


def cli(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdin that is not a terminal (whatever runs the tests)."""
    env = dict(os.environ)
    env.pop("GATEWAY_CONFIG", None)
    env["GATEWAY_REDIS_URL"] = server.url
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def create_account(server: RedisServer, *extra: str) -> dict[str, Any]:
    return ok_json(cli(server, "accounts", "create", "ops team", "--json", *extra))


def ok_list(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    assert isinstance(data, list)
    return data


def usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    failed(result, *needles)
    assert result.returncode == 2, (result.returncode, result.stderr)


def cli_tty(server: RedisServer, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a terminal as stdin, typing `answer` into it."""
    env = dict(os.environ)
    env.pop("GATEWAY_CONFIG", None)
    env["GATEWAY_REDIS_URL"] = server.url
    return cli_with_terminal(args, answer, env)


def create_key(server: RedisServer, account_id: str, *extra: str) -> dict[str, Any]:
    return ok_json(cli(server, "keys", "create", "--account", account_id, "--scope", "a.b",
                       "--json", *extra))


def stored_key(server: RedisServer, key_id: str) -> dict[str, Any] | None:
    with server.client() as client:
        data = client.get(f"gw:key:{key_id}")
    return None if data is None else orjson.loads(data)


def stored_account(server: RedisServer, account_id: str) -> dict[str, Any] | None:
    with server.client() as client:
        data = client.get(f"gw:account:{account_id}")
    return None if data is None else orjson.loads(data)


# -- accounts ------------------------------------------------------------------------------------

def test_accounts_list_json_and_table(redis_clean) -> None:
    assert ok_list(cli(redis_clean, "accounts", "list", "--json")) == []
    first = create_account(redis_clean)
    second = ok_json(cli(redis_clean, "accounts", "create", "no rights", "--no-api-access",
                         "--json"))
    create_key(redis_clean, first["id"])
    create_key(redis_clean, first["id"])

    listed = ok_list(cli(redis_clean, "accounts", "list", "--json"))
    assert [a["id"] for a in listed] == [first["id"], second["id"]]  # oldest first
    by_id = {a["id"]: a for a in listed}
    assert by_id[first["id"]] == {**first, "key_count": 2}
    assert by_id[second["id"]] == {**second, "key_count": 0}
    assert by_id[second["id"]]["api_access"] is False

    table = cli(redis_clean, "accounts", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ENABLED", "API_ACCESS", "KEY_COUNT",
                                "CREATED_AT"]
    assert len(lines) == 3
    row = next(line for line in lines if first["id"] in line)
    assert "ops team" in row and " 2 " in row and first["created_at"] in row


def test_accounts_show(redis_clean) -> None:
    account = create_account(redis_clean)
    create_key(redis_clean, account["id"])
    shown = ok_json(cli(redis_clean, "accounts", "show", account["id"], "--json"))
    assert shown == {**account, "key_count": 1}
    table = cli(redis_clean, "accounts", "show", account["id"])
    assert table.returncode == 0, table.stderr
    assert any(line.split() == ["key_count", "1"] for line in table.stdout.splitlines())
    failed(cli(redis_clean, "accounts", "show", "acc_doesnotexist"), "acc_doesnotexist")


def test_accounts_update_flags(redis_clean) -> None:
    account = create_account(redis_clean)
    ident = account["id"]
    changed = ok_json(cli(redis_clean, "accounts", "update", ident, "--disable", "--json"))
    assert (changed["enabled"], changed["api_access"]) == (False, True)
    changed = ok_json(cli(redis_clean, "accounts", "update", ident, "--no-api-access",
                          "--json"))
    assert (changed["enabled"], changed["api_access"]) == (False, False)
    changed = ok_json(cli(redis_clean, "accounts", "update", ident, "--enable", "--api-access",
                          "--json"))
    assert (changed["enabled"], changed["api_access"]) == (True, True)
    assert changed["name"] == "ops team" and changed["created_at"] == account["created_at"]
    stored = stored_account(redis_clean, ident)
    assert stored is not None and stored["enabled"] is True and stored["api_access"] is True

    table = cli(redis_clean, "accounts", "update", ident, "--disable")
    assert table.returncode == 0, table.stderr
    assert any(line.split() == ["enabled", "no"] for line in table.stdout.splitlines())


def test_accounts_update_errors(redis_clean) -> None:
    account = create_account(redis_clean)
    usage_error(cli(redis_clean, "accounts", "update", account["id"]), "nothing to change")
    failed(cli(redis_clean, "accounts", "update", "acc_doesnotexist", "--disable"),
           "acc_doesnotexist")
    stored = stored_account(redis_clean, account["id"])
    assert stored is not None and stored["enabled"] is True


def test_accounts_delete_is_refused_while_it_has_keys(redis_clean) -> None:
    account = create_account(redis_clean)
    key = create_key(redis_clean, account["id"])
    failed(cli(redis_clean, "accounts", "delete", account["id"], "--yes"), "--delete-keys")
    assert stored_account(redis_clean, account["id"]) is not None
    assert stored_key(redis_clean, key["id"]) is not None

    result = cli(redis_clean, "accounts", "delete", account["id"], "--delete-keys", "--yes",
                 "--json")
    assert ok_json(result) == {"deleted_account": account["id"], "deleted_keys": [key["id"]]}
    assert stored_account(redis_clean, account["id"]) is None
    assert stored_key(redis_clean, key["id"]) is None
    assert ok_list(cli(redis_clean, "accounts", "list", "--json")) == []
    failed(cli(redis_clean, "accounts", "delete", account["id"], "--yes"), account["id"])


def test_accounts_delete_asks_first(redis_clean) -> None:
    account = create_account(redis_clean)
    ident = account["id"]

    refused = cli(redis_clean, "accounts", "delete", ident)  # stdin is not a terminal
    failed(refused, "--yes", "terminal")
    assert stored_account(redis_clean, ident) is not None

    answered_no = cli_tty(redis_clean, "n\n", "accounts", "delete", ident)
    assert answered_no.returncode == 1, answered_no.stderr
    assert "Traceback" not in answered_no.stderr
    assert ident in answered_no.stderr  # it said what it would delete
    assert stored_account(redis_clean, ident) is not None

    answered_yes = cli_tty(redis_clean, "y\n", "accounts", "delete", ident)
    assert answered_yes.returncode == 0, answered_yes.stderr
    assert f"Deleted account {ident}" in answered_yes.stdout
    assert stored_account(redis_clean, ident) is None


# -- keys list -----------------------------------------------------------------------------------

def test_keys_list_json_shape_filter_and_status(redis_clean) -> None:
    assert ok_list(cli(redis_clean, "keys", "list", "--json")) == []
    ops = create_account(redis_clean)
    other = ok_json(cli(redis_clean, "accounts", "create", "other", "--json"))
    active = create_key(redis_clean, ops["id"], "--expires-in", "30d", "--description", "d")
    expired = create_key(redis_clean, ops["id"])
    disabled = create_key(redis_clean, other["id"])
    # An expiry already passed cannot be set through the CLI; write it into the record.
    with redis_clean.client() as client:
        record = orjson.loads(client.get(f"gw:key:{expired['id']}"))
        record["expires_at"] = time.time() - 60
        client.set(f"gw:key:{expired['id']}", orjson.dumps(record))
        client.hset("gw:last-used", active["id"], f"{time.time() - 30:.3f}")

    listed = ok_list(cli(redis_clean, "keys", "list", "--json"))
    assert [k["id"] for k in listed] == [active["id"], expired["id"], disabled["id"]]
    by_id = {k["id"]: k for k in listed}
    shown = by_id[active["id"]]
    for field in ("id", "type", "account_id", "scopes", "created_at", "expires_at",
                  "last_used_at", "masked_secret", "status"):
        assert field in shown, field
    assert shown["account_id"] == ops["id"] and shown["scopes"] == ["a.b"]
    assert shown["expires_at"] == active["expires_at"]
    assert abs(parse_time(shown["last_used_at"]) - (time.time() - 30)) < 30
    assert shown["masked_secret"].endswith(active["secret"][-6:])
    assert shown["status"] == "active"
    assert by_id[expired["id"]]["status"] == "expired"
    assert by_id[disabled["id"]]["status"] == "active"
    for key in (active, expired, disabled):
        assert "secret" not in by_id[key["id"]]

    ok_json(cli(redis_clean, "accounts", "update", other["id"], "--disable", "--json"))
    listed = ok_list(cli(redis_clean, "keys", "list", "--json"))
    assert {k["id"]: k["status"] for k in listed}[disabled["id"]] == "account disabled"
    ok_json(cli(redis_clean, "accounts", "update", other["id"], "--enable", "--no-api-access",
                "--json"))
    listed = ok_list(cli(redis_clean, "keys", "list", "--json"))
    assert {k["id"]: k["status"] for k in listed}[disabled["id"]] == "no api access"

    only_other = ok_list(cli(redis_clean, "keys", "list", "--account", other["id"], "--json"))
    assert [k["id"] for k in only_other] == [disabled["id"]]
    unknown = cli(redis_clean, "keys", "list", "--account", "acc_doesnotexist", "--json")
    failed(unknown, "acc_doesnotexist")
    assert unknown.stdout == ""

    everything = cli(redis_clean, "keys", "list", "--json").stdout
    for key in (active, expired, disabled):
        assert key["secret"] not in everything and key["secret"][4:] not in everything


def test_keys_list_table(redis_clean) -> None:
    account = create_account(redis_clean)
    key = create_key(redis_clean, account["id"], "--scope", "c.*")
    result = cli(redis_clean, "keys", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "ACCOUNT_ID", "SCOPES", "CREATED_AT",
                                "EXPIRES_AT", "LAST_USED_AT", "MASKED_SECRET", "STATUS"]
    assert len(lines) == 2
    assert lines[1].split() == [key["id"], key["type"], account["id"], "a.b", "c.*",
                                key["created_at"], "-", "-", f"gwk_…{key['secret'][-6:]}",
                                "active"]
    assert not SECRET.search(result.stdout)


# -- keys update ---------------------------------------------------------------------------------

def test_keys_update_expiry_and_description(redis_clean) -> None:
    account = create_account(redis_clean)
    key = create_key(redis_clean, account["id"], "--description", "first")
    ident = key["id"]
    assert key["expires_at"] is None

    before = time.time()
    updated = ok_json(cli(redis_clean, "keys", "update", ident, "--expires-in", "2h", "--json"))
    expires = parse_time(updated["expires_at"])
    assert before + 7200 - 60 <= expires <= time.time() + 7200 + 60
    assert updated["description"] == "first"
    assert updated["scopes"] == ["a.b"] and updated["account_id"] == account["id"]

    updated = ok_json(cli(redis_clean, "keys", "update", ident, "--expires-at",
                          "2099-01-31T00:00:00Z", "--json"))
    assert updated["expires_at"] == "2099-01-31T00:00:00Z"

    updated = ok_json(cli(redis_clean, "keys", "update", ident, "--description", "second",
                          "--json"))
    assert updated["description"] == "second"
    assert updated["expires_at"] == "2099-01-31T00:00:00Z"  # untouched

    updated = ok_json(cli(redis_clean, "keys", "update", ident, "--no-expiry", "--description",
                          "third", "--json"))
    assert updated["expires_at"] is None and updated["description"] == "third"
    stored = stored_key(redis_clean, ident)
    assert stored is not None
    assert stored["expires_at"] is None and stored["description"] == "third"
    assert stored["secret_tail"] == key["secret"][-6:]  # the secret did not change

    table = cli(redis_clean, "keys", "update", ident, "--description", "fourth")
    assert table.returncode == 0, table.stderr
    assert any(line.split() == ["description", "fourth"] for line in table.stdout.splitlines())


@pytest.mark.parametrize(("args", "needle"), [
    (("--expires-at", "2001-01-01T00:00:00Z"), "in the past"),
    (("--expires-in", "soon"), "--expires-in"),
    (("--expires-in", "0s"), "greater than zero"),
    (("--expires-at", "next tuesday"), "ISO 8601"),
    (("--expires-in", "1h", "--no-expiry"), "only one of"),
    (("--expires-in", "1h", "--expires-at", "2099-01-01T00:00:00Z"), "only one of"),
    ((), "nothing to change"),
    (("--scope", "x.y"), "create a new key to change its scopes"),
    (("--account", "acc_other"), "create a new key to change its account"),
    (("--type", "hmac"), "create a new key to change its type"),
    (("--name", "n"), "create a new key to change its name"),
], ids=["past", "bad-duration", "zero", "bad-time", "two-expiries", "in-and-at", "nothing",
        "scope", "account", "type", "name"])
def test_keys_update_errors_change_nothing(redis_clean, args, needle) -> None:
    account = create_account(redis_clean)
    key = create_key(redis_clean, account["id"], "--expires-in", "30d", "--description", "d")
    before = stored_key(redis_clean, key["id"])
    # A valid description alongside must not slip through either.
    extra = ("--description", "changed") if args else ()
    result = cli(redis_clean, "keys", "update", key["id"], *args, *extra)
    usage_error(result, needle)
    if args and args[0] in ("--scope", "--account", "--type", "--name"):
        assert "only a key's expiry, description and limits can change" in result.stderr
    assert stored_key(redis_clean, key["id"]) == before


def test_keys_update_unknown_key(redis_clean) -> None:
    failed(cli(redis_clean, "keys", "update", "ak_doesnotexist", "--no-expiry"),
           "ak_doesnotexist")


# -- keys delete ---------------------------------------------------------------------------------

def test_keys_delete_several_with_yes(redis_clean) -> None:
    account = create_account(redis_clean)
    keys = [create_key(redis_clean, account["id"]) for _ in range(3)]
    result = cli(redis_clean, "keys", "delete", keys[0]["id"], keys[1]["id"], keys[0]["id"],
                 "--yes", "--json")
    assert ok_json(result) == {"deleted": [keys[0]["id"], keys[1]["id"]]}
    assert stored_key(redis_clean, keys[0]["id"]) is None
    assert stored_key(redis_clean, keys[1]["id"]) is None
    assert stored_key(redis_clean, keys[2]["id"]) is not None
    with redis_clean.client() as client:
        assert not client.exists(f"gw:secret:{hash_secret(keys[0]['secret'])}")
    listed = ok_list(cli(redis_clean, "keys", "list", "--json"))
    assert [k["id"] for k in listed] == [keys[2]["id"]]

    table = cli(redis_clean, "keys", "delete", keys[2]["id"], "--yes")
    assert table.returncode == 0, table.stderr
    assert keys[2]["id"] in table.stdout
    assert ok_list(cli(redis_clean, "keys", "list", "--json")) == []


@pytest.mark.parametrize("confirm", [(), ("--yes",)], ids=["asking", "yes"])
def test_keys_delete_with_an_unknown_id_deletes_nothing(redis_clean, confirm) -> None:
    account = create_account(redis_clean)
    keys = [create_key(redis_clean, account["id"]) for _ in range(2)]
    result = cli(redis_clean, "keys", "delete", keys[0]["id"], "ak_doesnotexist",
                 keys[1]["id"], *confirm)
    failed(result, "ak_doesnotexist", "nothing deleted")
    for key in keys:
        assert stored_key(redis_clean, key["id"]) is not None


def test_keys_delete_asks_first(redis_clean) -> None:
    account = create_account(redis_clean)
    keys = [create_key(redis_clean, account["id"]) for _ in range(2)]
    ids = [k["id"] for k in keys]

    refused = cli(redis_clean, "keys", "delete", *ids)  # stdin is not a terminal, no --yes
    failed(refused, "--yes", "terminal")
    assert all(stored_key(redis_clean, i) is not None for i in ids)

    answered_no = cli_tty(redis_clean, "n\n", "keys", "delete", *ids)
    assert answered_no.returncode == 1, answered_no.stderr
    assert "Traceback" not in answered_no.stderr
    for key in keys:  # it listed what it would delete, masked
        assert key["id"] in answered_no.stderr
        assert f"gwk_…{key['secret'][-6:]}" in answered_no.stderr
        assert key["secret"] not in answered_no.stderr
    assert all(stored_key(redis_clean, i) is not None for i in ids)

    answered_yes = cli_tty(redis_clean, "y\n", "keys", "delete", *ids)
    assert answered_yes.returncode == 0, answered_yes.stderr
    assert all(i in answered_yes.stdout for i in ids)
    assert all(stored_key(redis_clean, i) is None for i in ids)


# -- keys reissue --------------------------------------------------------------------------------

def test_keys_reissue_json_and_table(redis_clean) -> None:
    account = create_account(redis_clean)
    key = create_key(redis_clean, account["id"], "--expires-in", "30d")
    before = time.time()
    result = cli(redis_clean, "keys", "reissue", key["id"], "--grace", "10m", "--json")
    reissued = ok_json(result)
    assert reissued["id"] == key["id"]
    assert reissued["scopes"] == key["scopes"] and reissued["expires_at"] == key["expires_at"]
    assert SECRET.fullmatch(reissued["secret"]) and reissued["secret"] != key["secret"]
    until = parse_time(reissued["previous_secret_valid_until"])
    assert before + 600 - 60 <= until <= time.time() + 600 + 60
    stored = stored_key(redis_clean, key["id"])
    assert stored is not None and stored["secret_tail"] == reissued["secret"][-6:]

    table = cli(redis_clean, "keys", "reissue", key["id"])
    assert table.returncode == 0, table.stderr
    shown = SECRET.findall(table.stdout)
    assert len(shown) == 1, table.stdout
    assert shown[0] not in (key["secret"], reissued["secret"])
    assert shown[0] not in table.stderr
    assert "no longer works" in table.stderr and "again" in table.stderr
    assert any(line.split() == ["previous_secret_valid_until", "-"]
               for line in table.stdout.splitlines())

    failed(cli(redis_clean, "keys", "reissue", key["id"], "--grace", "a while"), "--grace")
    failed(cli(redis_clean, "keys", "reissue", "ak_doesnotexist"), "ak_doesnotexist")


def svc_routes(upstream: Any) -> list[dict[str, Any]]:
    return [{"name": "svc", "prefix": "/svc/", "upstream": f"http://127.0.0.1:{upstream.port}",
             "strip_prefix": True, "scopes": ["a.b"]}]


async def call(http: Any, url: str, secret: str) -> tuple[int, str | None]:
    async with http.get(url, headers=api_key(secret)) as response:
        body = await response.read()
        code = None
        if response.status != 200:
            code = orjson.loads(body)["error"]["code"]
        return response.status, code


async def poll_until_refused(http: Any, url: str, secret: str,
                             within: float) -> tuple[int, str | None]:
    deadline = time.monotonic() + within
    while True:
        status, code = await call(http, url, secret)
        if status != 200 or time.monotonic() > deadline:
            return status, code
        await asyncio.sleep(0.05)


async def run_cli(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the gateway under test shares this event loop and must keep serving.
    return await asyncio.to_thread(cli, server, *args)


async def test_reissue_grace_keeps_the_old_secret_working_until_it_ends(
        redis_clean, upstream, start_gateway, http) -> None:
    account = create_account(redis_clean)
    key = create_key(redis_clean, account["id"])
    gateway = await start_gateway(make_config(redis_clean.url, svc_routes(upstream)))
    url = gateway.url + "/svc/x"
    assert await call(http, url, key["secret"]) == (200, None)  # cached now

    reissued = ok_json(await run_cli(redis_clean, "keys", "reissue", key["id"], "--grace", "2s",
                                     "--json"))
    new, old = reissued["secret"], key["secret"]
    assert await call(http, url, new) == (200, None)
    assert await call(http, url, old) == (200, None)

    status, code = await poll_until_refused(http, url, old, 2 + POLL)
    assert (status, code) == (401, "invalid_credentials")
    assert await call(http, url, new) == (200, None)


async def test_reissue_grace_never_outlives_the_key(redis_clean, upstream, start_gateway, http,
                                                    key_service) -> None:
    account = await key_service.create_account("short")
    # Made in-process so that little of its short life goes by before the CLI reissues it.
    record, old = await key_service.create_key(account_id=account.id, scopes=["a.b"],
                                               expires_at=time.time() + 3)
    gateway = await start_gateway(make_config(redis_clean.url, svc_routes(upstream)))
    url = gateway.url + "/svc/x"

    reissued = ok_json(await run_cli(redis_clean, "keys", "reissue", record.id, "--grace", "1h",
                                     "--json"))
    new = reissued["secret"]
    assert reissued["expires_at"] is not None
    assert reissued["previous_secret_valid_until"] == reissued["expires_at"]  # not now + 1h
    assert parse_time(reissued["expires_at"]) > time.time(), "the key expired before the test"
    assert await call(http, url, old) == (200, None)
    assert await call(http, url, new) == (200, None)

    # Once the key expires the old secret is unknown (its grace ended with the key: its pointer
    # is gone), while the new one is recognised and reported expired.
    assert await poll_until_refused(http, url, old, 3 + POLL) == (401, "invalid_credentials")
    assert await poll_until_refused(http, url, new, POLL) == (401, "expired_key")


async def test_changes_reach_a_running_gateway(redis_clean, upstream, start_gateway,
                                               http) -> None:
    account = create_account(redis_clean)
    first = create_key(redis_clean, account["id"])
    second = create_key(redis_clean, account["id"])
    gateway = await start_gateway(make_config(redis_clean.url, svc_routes(upstream)))
    url = gateway.url + "/svc/x"
    for key in (first, second):
        assert await call(http, url, key["secret"]) == (200, None)

    ok_json(await run_cli(redis_clean, "accounts", "update", account["id"], "--disable",
                          "--json"))
    assert await poll_until_refused(http, url, first["secret"], POLL) == (
        403, "account_disabled")
    ok_json(await run_cli(redis_clean, "accounts", "update", account["id"], "--enable",
                          "--no-api-access", "--json"))
    assert await poll_until_refused(http, url, first["secret"], POLL) == (
        403, "api_access_denied")
    ok_json(await run_cli(redis_clean, "accounts", "update", account["id"], "--api-access",
                          "--json"))
    deadline = time.monotonic() + POLL
    while await call(http, url, first["secret"]) != (200, None):
        assert time.monotonic() < deadline, "the account was not re-enabled in time"
        await asyncio.sleep(0.05)

    ok_json(await run_cli(redis_clean, "keys", "update", first["id"], "--expires-in", "1s",
                          "--json"))
    assert await poll_until_refused(http, url, first["secret"], 1 + POLL) == (
        401, "expired_key")
    ok_json(await run_cli(redis_clean, "keys", "delete", second["id"], "--yes", "--json"))
    assert await poll_until_refused(http, url, second["secret"], POLL) == (
        401, "invalid_credentials")


# -- audit ---------------------------------------------------------------------------------------

def test_audit_list_records_cli_changes_without_secrets(redis_clean) -> None:
    assert ok_list(cli(redis_clean, "audit", "list", "--json")) == []
    account = create_account(redis_clean)
    key = create_key(redis_clean, account["id"], "--description", "audited")
    other = create_key(redis_clean, account["id"])
    ok_json(cli(redis_clean, "keys", "update", key["id"], "--expires-in", "1h", "--json"))
    reissued = ok_json(cli(redis_clean, "keys", "reissue", key["id"], "--grace", "1m",
                           "--json"))
    ok_json(cli(redis_clean, "accounts", "update", account["id"], "--disable", "--json"))
    ok_json(cli(redis_clean, "keys", "delete", other["id"], "--yes", "--json"))
    ok_json(cli(redis_clean, "accounts", "delete", account["id"], "--delete-keys", "--yes",
                "--json"))

    result = cli(redis_clean, "audit", "list", "--json")
    entries = ok_list(result)
    assert [(e["action"], e["ids"]) for e in entries] == [
        ("account.create", [account["id"]]),
        ("key.create", [key["id"]]),
        ("key.create", [other["id"]]),
        ("key.update", [key["id"]]),
        ("key.reissue", [key["id"]]),
        ("account.update", [account["id"]]),
        ("key.delete", [other["id"]]),
        ("account.delete", [account["id"], key["id"]]),
    ]
    for entry in entries:
        assert entry["actor"] == "cli"
        assert abs(parse_time(entry["at"]) - time.time()) < 120
        assert entry["id"]
    assert entries[5]["enabled"] is False

    table = cli(redis_clean, "audit", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["AT", "ACTOR", "ACTION", "IDS"]
    assert len(lines) == 1 + len(entries)
    assert "key.reissue" in lines[5] and key["id"] in lines[5] and " cli " in lines[5]

    for secret in (key["secret"], other["secret"], reissued["secret"]):
        for text in (result.stdout, table.stdout):
            assert secret not in text
            assert secret[4:] not in text
            assert hash_secret(secret) not in text
    with redis_clean.client() as client:
        raw = b"".join(b"".join(fields.values()) for _, fields in client.xrange("gw:audit"))
    assert len(raw) > 0
    for secret in (key["secret"], other["secret"], reissued["secret"]):
        assert secret.encode() not in raw and hash_secret(secret).encode() not in raw


def test_audit_list_since(redis_clean) -> None:
    create_account(redis_clean)
    time.sleep(1.1)  # audit times are whole seconds apart from here
    middle = time.time()
    time.sleep(0.1)
    later = create_account(redis_clean)

    assert len(ok_list(cli(redis_clean, "audit", "list", "--since", "1h", "--json"))) == 2
    assert len(ok_list(cli(redis_clean, "audit", "list", "--since", "30m", "--json"))) == 2
    stamp = datetime.fromtimestamp(middle, UTC).isoformat()
    from_middle = ok_list(cli(redis_clean, "audit", "list", "--since", stamp, "--json"))
    assert [e["ids"] for e in from_middle] == [[later["id"]]]
    assert ok_list(cli(redis_clean, "audit", "list", "--since", "2099-01-01T00:00:00Z",
                       "--json")) == []
    usage_error(cli(redis_clean, "audit", "list", "--since", "last week"), "--since")


def test_audit_list_pages_through_many_entries(redis_clean) -> None:
    with redis_clean.client() as client, client.pipeline(transaction=False) as pipe:
        for n in range(1234):
            pipe.xadd("gw:audit", {"entry": orjson.dumps({
                "at": "2026-01-01T00:00:00Z", "actor": "cli", "action": "key.delete",
                "ids": [f"ak_{n:020d}"]})})
        pipe.execute()
    entries = ok_list(cli(redis_clean, "audit", "list", "--json"))
    assert [e["ids"][0] for e in entries] == [f"ak_{n:020d}" for n in range(1234)]
    assert len({e["id"] for e in entries}) == 1234


# -- help ----------------------------------------------------------------------------------------

HELP_CASES = [
    ((), ("accounts", "keys", "audit", "config", "run")),
    (("accounts",), ("create", "list", "show", "update", "delete")),
    (("accounts", "list"), ("--json", "--config")),
    (("accounts", "show"), ("--json", "ID")),
    (("accounts", "update"), ("--enable / --disable", "--api-access / --no-api-access")),
    (("accounts", "delete"), ("--delete-keys", "--yes")),
    (("keys",), ("create", "list", "show", "update", "delete", "reissue")),
    (("keys", "list"), ("--account", "--json")),
    (("keys", "update"), ("--expires-in", "--expires-at", "--no-expiry", "--description")),
    (("keys", "delete"), ("--yes", "KEY_IDS")),
    (("keys", "reissue"), ("--grace", "--json")),
    (("audit",), ("list",)),
    (("audit", "list"), ("--since", "--json")),
]


@pytest.mark.parametrize(("command", "options"), HELP_CASES,
                         ids=["-".join(command) or "gateway" for command, _ in HELP_CASES])
def test_help_describes_the_options(command, options) -> None:
    result = subprocess.run(gateway_command(*command, "--help"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout, (option, result.stdout)
    if command == ("keys", "update"):
        for hidden in ("--scope", "--name", "--type"):
            assert hidden not in result.stdout  # refused, so not offered
