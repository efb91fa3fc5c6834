"""Terminal escapes in names and descriptions (issue 17, item 7): the service refuses control
characters, line separators and bidi controls in account names and key descriptions (so the
CLI, the admin API and the page all do), and the CLI prints escaped whatever reaches it anyway
(a record written before the fix, or straight into Redis)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.keys.service import KeyService
from tests.conftest import admin_json, make_config
from tests.support.processes import gateway_command
from tests.support.redis_server import RedisServer

TOKEN = "control-characters-admin-token"

REFUSED = [
    pytest.param("\x1b[2Jgotcha", 0x1B, id="ESC"),
    pytest.param("row\rover", 0x0D, id="CR"),
    pytest.param("ding\x07", 0x07, id="BEL"),
    pytest.param("a\tb", 0x09, id="TAB"),
    pytest.param("two\nlines", 0x0A, id="LF"),
    pytest.param("nul\x00", 0x00, id="NUL"),
    pytest.param("del\x7f", 0x7F, id="DEL"),
    pytest.param("csi\x9b2J", 0x9B, id="C1-CSI"),
    pytest.param("next\x85line", 0x85, id="C1-NEL"),
    pytest.param("line\u2028sep", 0x2028, id="LINE-SEPARATOR"),
    pytest.param("para\u2029sep", 0x2029, id="PARAGRAPH-SEPARATOR"),
    pytest.param("admin\u202etxt.exe", 0x202E, id="RLO"),
    pytest.param("x\u2066y\u2069", 0x2066, id="LRI"),
    pytest.param("mark\u200f", 0x200F, id="RLM"),
    pytest.param("arabic\u061cmark", 0x061C, id="ALM"),
    pytest.param("bad byte \udcff", 0xDCFF, id="SURROGATE"),
]

ALLOWED = [
    "ops team",
    "Équipe données",
    "運用チーム",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467",  # zero-width joiners
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a zero-width non-joiner
    "no\u00a0break",
    "O'Brien \"quoted\" <tag> & back\\slash",
]


def assert_refused(exc: pytest.ExceptionInfo[InvalidRequest], field: str, code: int) -> None:
    assert exc.value.field == field
    assert f"U+{code:04X}" in str(exc.value), str(exc.value)


# -- the service ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "code"), REFUSED)
async def test_account_names_with_control_characters_are_refused(key_service: KeyService,
                                                                 text: str, code: int) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await key_service.create_account(text)
    assert_refused(exc, "name", code)
    assert (await key_service.list_accounts()).items == []


@pytest.mark.parametrize(("text", "code"), REFUSED)
async def test_key_descriptions_with_control_characters_are_refused(
        key_service: KeyService, text: str, code: int) -> None:
    account = await key_service.create_account("owner")
    with pytest.raises(InvalidRequest) as exc:
        await key_service.create_key(account_id=account.id, description=text)
    assert_refused(exc, "description", code)
    assert (await key_service.list_keys()).items == []

    key, _ = await key_service.create_key(account_id=account.id, description="before")
    with pytest.raises(InvalidRequest) as exc:
        await key_service.update_key(key.id, description=text)
    assert_refused(exc, "description", code)
    assert (await key_service.get_key(key.id)).description == "before"


@pytest.mark.parametrize("text", ALLOWED)
async def test_printable_names_and_descriptions_are_kept_as_given(key_service: KeyService,
                                                                  text: str) -> None:
    account = await key_service.create_account(text)
    assert (await key_service.get_account(account.id)).name == text
    key, _ = await key_service.create_key(account_id=account.id, description=text)
    assert (await key_service.get_key(key.id)).description == text
    changed = await key_service.update_key(key.id, description=text + "!")
    assert changed.description == text + "!"


async def test_surrounding_whitespace_of_a_name_is_trimmed_not_refused(
        key_service: KeyService) -> None:
    # As before: `accounts create "$(cat name.txt)"` and a pasted name keep working.
    account = await key_service.create_account("  ops team\n")
    assert account.name == "ops team"


# -- the admin API (and so the page, which calls it) ---------------------------------------------

@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    return await start_gateway(make_config(redis_clean.url, [],
                                           admin={"host": "127.0.0.1", "port": 0,
                                                  "token": TOKEN}))


async def admin(http: Any, gateway: Any, method: str, path: str, body: Any,
                expect: int) -> Any:
    return await admin_json(http, gateway.admin_url, TOKEN, method, path, body, expect)


@pytest.mark.parametrize(("text", "code"), [p for p in REFUSED if p.id != "SURROGATE"])
async def test_the_admin_api_answers_422_naming_the_field(gateway, http, text: str,
                                                          code: int) -> None:
    error = await admin(http, gateway, "POST", "/admin/accounts", {"name": text}, 422)
    assert error["error"]["code"] == "invalid_request"
    assert error["error"]["message"].startswith("name: ") and f"U+{code:04X}" in \
        error["error"]["message"]
    account = await admin(http, gateway, "POST", "/admin/accounts", {"name": "owner"}, 201)
    error = await admin(http, gateway, "POST", "/admin/keys",
                        {"account_id": account["id"], "description": text}, 422)
    assert error["error"]["message"].startswith("description: ")
    key = await admin(http, gateway, "POST", "/admin/keys",
                      {"account_id": account["id"], "description": "fine"}, 201)
    error = await admin(http, gateway, "PATCH", f"/admin/keys/{key['id']}",
                        {"description": text}, 422)
    assert error["error"]["code"] == "invalid_request"
    assert error["error"]["message"].startswith("description: ")
    shown = await admin(http, gateway, "GET", f"/admin/keys/{key['id']}", None, 200)
    assert shown["description"] == "fine"
    listed = await admin(http, gateway, "GET", "/admin/accounts", None, 200)
    assert [a["name"] for a in listed["items"]] == ["owner"]


async def test_a_lone_surrogate_in_the_body_is_a_bad_request(gateway, http) -> None:
    # JSON can spell one (\udcff) but it is no text: refused as a body, not a 500.
    async with http.post(gateway.admin_url + "/admin/accounts",
                         data=b'{"name": "bad \\udcff"}',
                         headers={"Authorization": f"Bearer {TOKEN}",
                                  "Content-Type": "application/json"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_request"


# -- the CLI, on records written straight into Redis --------------------------------------------

HOSTILE = "evil\x1b[2J\x1b]0;owned\x07\rrow\x9b1A\u202etxt.exe\x7f"
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\x7f")


def cli(server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    env["GATEWAY_REDIS_URL"] = server.url
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def overwrite(server: RedisServer, record_key: str, **fields: str) -> None:
    """Change a stored record behind the service's back, as an older version (or anyone with
    access to Redis) could have written it."""
    client = server.client()
    record = orjson.loads(client.get(record_key))
    record.update(fields)
    client.set(record_key, orjson.dumps(record))


def test_the_cli_never_prints_a_raw_control_character(redis_clean: RedisServer) -> None:
    account = json.loads(cli(redis_clean, "accounts", "create", "plain", "--json").stdout)
    created = cli(redis_clean, "keys", "create", "--account", account["id"], "--json")
    key = json.loads(created.stdout)
    overwrite(redis_clean, f"gw:account:{account['id']}", name=HOSTILE)
    overwrite(redis_clean, f"gw:key:{key['id']}", description=HOSTILE)

    human = [
        cli(redis_clean, "accounts", "list"),
        cli(redis_clean, "accounts", "show", account["id"]),
        cli(redis_clean, "keys", "show", key["id"]),
        # Without --yes and without a terminal: they list what they would delete, then refuse.
        cli(redis_clean, "keys", "delete", key["id"]),
        cli(redis_clean, "accounts", "delete", account["id"], "--delete-keys"),
    ]
    scripts = [
        cli(redis_clean, "accounts", "list", "--json"),
        cli(redis_clean, "accounts", "show", account["id"], "--json"),
        cli(redis_clean, "keys", "show", key["id"], "--json"),
        cli(redis_clean, "keys", "list", "--json"),
    ]
    for result in human + scripts:
        for char in RAW:
            assert char not in result.stdout + result.stderr, (result.args, result.stdout,
                                                               result.stderr)
    assert human[0].returncode == 0 and "evil\\x1b[2J\\x1b]0;owned\\x07\\x0drow\\x9b1A" \
        "\\u202etxt.exe\\x7f" in human[0].stdout, human[0].stdout
    assert "\\x1b[2J" in human[1].stdout and "\\x1b[2J" in human[2].stdout
    assert "\\x1b[2J" in human[3].stderr and "\\x1b[2J" in human[4].stderr
    assert human[3].returncode != 0 and human[4].returncode != 0
    # JSON keeps the value exactly: the escapes are JSON's own (\u001b, \u009b, ...).
    assert json.loads(scripts[0].stdout)[0]["name"] == HOSTILE
    assert json.loads(scripts[1].stdout)["name"] == HOSTILE
    assert json.loads(scripts[2].stdout)["description"] == HOSTILE
    assert json.loads(scripts[3].stdout)[0]["description"] == HOSTILE
    # Nothing was deleted by the refused confirmations.
    assert cli(redis_clean, "keys", "show", key["id"]).returncode == 0


def test_the_cli_refuses_a_name_with_an_escape(redis_clean: RedisServer) -> None:
    result = cli(redis_clean, "accounts", "create", "evil\x1b[2J")
    assert result.returncode != 0
    assert "name:" in result.stderr and "U+001B" in result.stderr
    assert "\x1b" not in result.stderr and "Traceback" not in result.stderr
    account = json.loads(cli(redis_clean, "accounts", "create", "plain", "--json").stdout)
    refused = cli(redis_clean, "keys", "create", "--account", account["id"], "--description",
                  "a\rb")
    assert refused.returncode != 0 and "description:" in refused.stderr, refused.stderr
    assert "U+000D" in refused.stderr
