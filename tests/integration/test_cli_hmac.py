"""HMAC keys from the CLI, and `gateway sign` producing requests the real gateway accepts."""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import shutil
import subprocess
from typing import Any

import orjson
import pytest

from gateway.config import build_config
from tests.support.processes import gateway_command

MASTER = base64.b64encode(os.urandom(32)).decode()
VISION = "yc.ai.vision.execute"


def cli(redis_url: str, *args: str, master: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_MASTER_KEY"}
    env["GATEWAY_REDIS_URL"] = redis_url
    if master:
        env["GATEWAY_MASTER_KEY"] = MASTER
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    data = {"listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0}, "redis": {"url": redis_clean.url},
            "routes": [{"name": "vision", "prefix": "/vision/",
                        "upstream": f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]}]}
    return await start_gateway(build_config(data, "<test>", {"GATEWAY_MASTER_KEY": MASTER}))


def hmac_key(redis_url: str) -> dict[str, Any]:
    account = orjson.loads(cli(redis_url, "accounts", "create", "signer", "--json").stdout)
    result = cli(redis_url, "keys", "create", "--account", account["id"], "--type", "hmac",
                 "--scope", VISION, "--expires-in", "1d", "--json")
    assert result.returncode == 0, result.stderr
    key: dict[str, Any] = orjson.loads(result.stdout)
    return key


def test_hmac_keys_show_token_and_secret_once(redis_clean) -> None:
    key = hmac_key(redis_clean.url)
    assert key["type"] == "hmac" and key["id"].startswith("gwh_") and key["token"] == key["id"]
    assert len(key["secret"]) == 43
    shown = cli(redis_clean.url, "keys", "show", key["id"], "--json")
    assert key["secret"] not in shown.stdout
    assert key["secret"] not in str(redis_clean.client().get(f"gw:key:{key['id']}"))


def test_hmac_keys_need_an_expiry_and_a_master_key(redis_clean) -> None:
    account = orjson.loads(cli(redis_clean.url, "accounts", "create", "a", "--json").stdout)
    no_expiry = cli(redis_clean.url, "keys", "create", "--account", account["id"], "--type",
                    "hmac")
    assert no_expiry.returncode != 0 and "expiry" in no_expiry.stderr
    no_master = cli(redis_clean.url, "keys", "create", "--account", account["id"], "--type",
                    "hmac", "--expires-in", "1d", master=False)
    assert no_master.returncode != 0 and "GATEWAY_MASTER_KEY" in no_master.stderr


async def test_gateway_sign_headers_and_curl_are_accepted(redis_clean, gateway, http,
                                                          tmp_path) -> None:
    key = hmac_key(redis_clean.url)
    url = gateway.url + "/vision/detect?lang=en"
    body_file = tmp_path / "body.json"
    body_file.write_bytes(b'{"image": "abc"}')
    signed = cli(redis_clean.url, "sign", "--key-id", key["id"], "--secret", key["secret"],
                 "POST", url, "--data", f"@{body_file}")
    assert signed.returncode == 0, signed.stderr
    headers = dict(line.split(": ", 1) for line in signed.stdout.strip().splitlines())
    assert set(headers) == {"Content-Digest", "Signature-Input", "Signature"}
    async with http.post(url, headers=headers, data=body_file.read_bytes()) as response:
        assert response.status == 200, await response.text()

    curl = cli(redis_clean.url, "sign", "--key-id", key["id"], "--secret", key["secret"],
               "GET", gateway.url + "/vision/x", "--curl")
    assert curl.returncode == 0, curl.stderr
    words = shlex.split(curl.stdout)
    assert words[:2] == ["curl", "-sS"]
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the printed command cannot be run here")
    # In a thread: the gateway under test runs on this test's event loop.
    result = await asyncio.to_thread(subprocess.run, words, capture_output=True, text=True,
                                     timeout=30)
    assert orjson.loads(result.stdout)["headers"]["X-Auth-Key-Id"] == key["id"]
    replay = await asyncio.to_thread(subprocess.run, words, capture_output=True, text=True,
                                     timeout=30)
    assert orjson.loads(replay.stdout)["error"]["code"] == "replayed_request"


@pytest.mark.parametrize(("args", "message"), [
    (("GET", "not-a-url"), "not an absolute http(s) URL"),
    (("GET", "http://h/x", "--header", "no-colon"), "Name: value"),
    (("POST", "http://h/x", "--data", "@/nonexistent/file"), "cannot read"),
])
def test_gateway_sign_errors(redis_clean, args, message) -> None:
    result = cli(redis_clean.url, "sign", "--key-id", "gwh_x", "--secret", "s", *args)
    assert result.returncode != 0
    assert message in result.stderr
