"""`gateway accounts ...`, `gateway keys ...` and `gateway run --demo` (SPEC §8) as an operator
runs them: real subprocesses on a real Redis."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.conftest import api_key, make_config
from tests.support.processes import GatewayProcess, gateway_command, write_config
from tests.support.redis_server import RedisServer

RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
SECRET = re.compile(r"gwk_[0-9A-Za-z]{36}")
CURL_LINE = re.compile(r"curl .*Authorization: Api-Key (gwk_[0-9A-Za-z]+).*$", re.MULTILINE)

DEMO_ROUTES = [
    {"name": "functions", "prefix": "/functions/", "upstream": "http://127.0.0.1:9101",
     "strip_prefix": True, "scopes": ["yc.serverless.functions.invoke"], "timeout": "30s"},
    {"name": "speech", "prefix": "/speech/", "upstream": "http://127.0.0.1:9102",
     "strip_prefix": True, "scopes": ["yc.ai.speechkitStt.execute"], "timeout": "60s"},
    {"name": "vision", "prefix": "/vision/", "upstream": "http://127.0.0.1:9103",
     "strip_prefix": True, "scopes": ["yc.ai.vision.execute"], "timeout": "30s"},
    {"name": "translate", "prefix": "/translate/", "upstream": "http://127.0.0.1:9104",
     "strip_prefix": True, "scopes": ["yc.ai.translate.execute"], "timeout": "30s"},
]


def cli(server: RedisServer | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("GATEWAY_CONFIG", None)
    if server is not None:
        env["GATEWAY_REDIS_URL"] = server.url
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60,
                          env=env)


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    assert isinstance(data, dict)
    return data


def failed(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    assert result.stderr.strip(), "no error message on stderr"
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def create_account(server: RedisServer, *extra: str) -> dict[str, Any]:
    return ok_json(cli(server, "accounts", "create", "ops team", "--json", *extra))


def parse_time(text: str) -> float:
    assert RFC3339_Z.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def http_get(url: str, secret: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=api_key(secret))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


# -- accounts ------------------------------------------------------------------------------------

def test_accounts_create_json(redis_clean) -> None:
    account = create_account(redis_clean)
    assert account["id"].startswith("acc_")
    assert account["name"] == "ops team"
    assert account["enabled"] is True
    assert account["api_access"] is True
    assert abs(parse_time(account["created_at"]) - time.time()) < 60
    with redis_clean.client() as client:
        assert client.exists(f"gw:account:{account['id']}")

    other = create_account(redis_clean, "--no-api-access")
    assert other["api_access"] is False
    assert other["id"] != account["id"]


# -- keys create / show --------------------------------------------------------------------------

async def test_keys_create_json_gives_a_working_secret_that_is_not_stored(
        redis_clean, upstream, start_gateway, http) -> None:
    account = create_account(redis_clean)
    before = time.time()
    key = ok_json(cli(redis_clean, "keys", "create", "--account", account["id"],
                      "--scope", "a.b", "--scope", "c.*", "--expires-in", "30d",
                      "--description", "d", "--json"))
    for field in ("id", "type", "account_id", "scopes", "expires_at", "secret"):
        assert field in key, field
    assert key["account_id"] == account["id"]
    assert key["type"] in ("api_key", "api-key")
    assert key["scopes"] == ["a.b", "c.*"]
    assert key["description"] == "d"
    expires = parse_time(key["expires_at"])
    assert before + 30 * 86400 - 60 <= expires <= time.time() + 30 * 86400 + 60
    secret = key["secret"]
    assert len(secret) == 40 and secret.startswith("gwk_") and SECRET.fullmatch(secret)

    gateway = await start_gateway(make_config(redis_clean.url, [
        {"name": "svc", "prefix": "/svc/", "upstream": f"http://127.0.0.1:{upstream.port}",
         "strip_prefix": True, "scopes": ["a.b"]}]))
    async with http.get(gateway.url + "/svc/hello", headers=api_key(secret)) as response:
        assert response.status == 200, await response.text()
        echo = await response.json()
    assert echo["path"] == "/hello"

    with redis_clean.client() as client:
        stored = client.get(f"gw:key:{key['id']}")
        assert stored is not None
        assert secret.encode() not in stored
        assert secret[4:].encode() not in stored
        everything = b"".join(client.dump(name) or b"" for name in client.scan_iter("*"))
    assert secret.encode() not in everything


def test_keys_show_json_has_last_used_and_never_the_secret(redis_clean) -> None:
    account = create_account(redis_clean)
    created = ok_json(cli(redis_clean, "keys", "create", "--account", account["id"],
                          "--scope", "a.b", "--json"))
    result = cli(redis_clean, "keys", "show", created["id"], "--json")
    shown = ok_json(result)
    assert shown["id"] == created["id"]
    assert shown["scopes"] == ["a.b"]
    assert "last_used_at" in shown
    assert shown["last_used_at"] is None
    assert "secret" not in shown
    assert created["secret"] not in result.stdout
    assert created["secret"][4:] not in result.stdout
    assert created["secret"] not in result.stderr

    used_at = time.time() - 120
    with redis_clean.client() as client:
        client.hset("gw:last-used", created["id"], f"{used_at:.3f}")
    shown = ok_json(cli(redis_clean, "keys", "show", created["id"], "--json"))
    assert abs(parse_time(shown["last_used_at"]) - used_at) < 2


def test_keys_create_without_json_prints_a_table_and_warns_on_stderr(redis_clean) -> None:
    account = create_account(redis_clean)
    result = cli(redis_clean, "keys", "create", "--account", account["id"], "--scope", "a.b")
    assert result.returncode == 0, result.stderr
    assert not result.stdout.lstrip().startswith("{"), "a table, not JSON"
    secrets_shown = SECRET.findall(result.stdout)
    assert len(secrets_shown) == 1, result.stdout
    lines = result.stdout.splitlines()
    assert any(re.match(r"^id\s+ak_", line) for line in lines), result.stdout
    assert any(line.startswith("secret") and secrets_shown[0] in line for line in lines)
    warning = result.stderr.lower()
    assert "secret" in warning and "again" in warning, result.stderr
    assert secrets_shown[0] not in result.stderr


# -- errors --------------------------------------------------------------------------------------

def test_unknown_account_is_an_error(redis_clean) -> None:
    failed(cli(redis_clean, "keys", "create", "--account", "acc_doesnotexist", "--json"),
           "acc_doesnotexist")
    with redis_clean.client() as client:
        assert not list(client.scan_iter("gw:key:*"))


def test_account_without_api_access_gets_no_key(redis_clean) -> None:
    account = create_account(redis_clean, "--no-api-access")
    result = cli(redis_clean, "keys", "create", "--account", account["id"], "--json")
    failed(result, "api_access")
    assert "gwk_" not in result.stdout
    with redis_clean.client() as client:
        assert not list(client.scan_iter("gw:key:*"))


@pytest.mark.parametrize(("expiry", "needle"), [
    (("--expires-in", "soon"), "--expires-in"),
    (("--expires-at", "2001-01-01T00:00:00Z"), "future"),
    (("--expires-in", "30d", "--expires-at", "2099-01-01T00:00:00Z"), "not both"),
], ids=["bad-duration", "past", "both"])
def test_bad_expiry_is_an_error(redis_clean, expiry, needle) -> None:
    account = create_account(redis_clean)
    result = cli(redis_clean, "keys", "create", "--account", account["id"], "--scope", "a.b",
                 *expiry, "--json")
    failed(result, needle)
    assert "gwk_" not in result.stdout
    with redis_clean.client() as client:
        assert not list(client.scan_iter("gw:key:*"))


def test_show_unknown_key_is_an_error(redis_clean) -> None:
    failed(cli(redis_clean, "keys", "show", "ak_doesnotexist", "--json"), "ak_doesnotexist")


def test_broken_config_file_is_an_error(redis_clean, tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("keys: {cache_ttl: soon}\n")
    result = cli(redis_clean, "accounts", "create", "x", "--json", "--config", str(path))
    failed(result, str(path), "keys.cache_ttl")
    assert result.stdout == ""


# -- default scopes ------------------------------------------------------------------------------

def test_key_without_scopes_gets_the_configured_default_scopes(redis_clean, tmp_path) -> None:
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump({"redis": {"url": redis_clean.url},
                                    "keys": {"default_scopes": ["yc.ai.*"]}}))
    account = ok_json(cli(None, "accounts", "create", "x", "--json", "--config", str(path)))
    key = ok_json(cli(None, "keys", "create", "--account", account["id"], "--json",
                      "--config", str(path)))
    assert key["scopes"] == ["yc.ai.*"]
    # Stored explicitly (SPEC §3), not resolved when read.
    with redis_clean.client() as client:
        stored = json.loads(client.get(f"gw:key:{key['id']}"))
    assert stored["scopes"] == ["yc.ai.*"]


# -- the demo ------------------------------------------------------------------------------------

@pytest.fixture
def demo_data_dir():  # type: ignore[no-untyped-def]
    # Short, so the unix socket path stays under the kernel's 107-byte limit.
    path = Path(tempfile.mkdtemp(prefix="gwdemo-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo_keys(data_dir: Path) -> list[bytes]:
    with redis.Redis(unix_socket_path=str(data_dir / "redis.sock")) as client:
        return sorted(client.scan_iter("gw:key:*"))


@pytest.mark.slow
def test_demo_key_is_created_once_printed_once_and_keeps_working(tmp_path,
                                                                  demo_data_dir) -> None:
    config_path, port, admin_port = write_config(tmp_path / "g.yaml", "embedded", DEMO_ROUTES,
                                                 data_dir=str(demo_data_dir))
    gateway = GatewayProcess(config_path, port, admin_port,
                             env={"GATEWAY_DATA_DIR": str(demo_data_dir)}, extra_args=("--demo",))
    try:
        gateway.start()
        found = _wait_for(lambda: CURL_LINE.search(gateway.log()), 10)
        assert found, f"no curl line in the log:\n{gateway.log()}"
        secret = found.group(1)
        assert SECRET.fullmatch(secret), secret
        assert f"localhost:{port}/vision/any/path?x=1" in found.group(0)
        assert gateway.log().count(secret) == 1, "the secret went into a log line too"

        status, body = http_get(gateway.url + "/vision/any/path?x=1", secret)
        assert status == 200, body
        echo = json.loads(body)
        assert echo["service"] == "vision"
        assert echo["path"] == "/any/path"
        assert echo["query"] == "x=1"
        first_keys = demo_keys(demo_data_dir)
        assert len(first_keys) == 1
        assert gateway.stop() == 0

        first_log_size = len(gateway.log())
        gateway.start()
        second_log = _wait_for(
            lambda: (lambda text: text if "demo" in text.lower() else None)(
                gateway.log()[first_log_size:]), 10)
        assert second_log, f"nothing about the demo key on the second start:\n{gateway.log()}"
        assert "Demo API key" in second_log and "created on the first start" in second_log, (
            second_log)
        assert first_keys[0].decode().removeprefix("gw:key:") in second_log
        assert not SECRET.search(second_log), "a secret printed on the second start"
        assert demo_keys(demo_data_dir) == first_keys, "a new demo key was created"

        status, body = http_get(gateway.url + "/vision/any/path?x=1", secret)
        assert status == 200, body
        assert json.loads(body)["service"] == "vision"
        assert gateway.stop() == 0
    finally:
        gateway.stop()


def _wait_for(probe: Any, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)
