"""The quick start's first run (issue 18, item 5): `gateway run --port/--admin-port` (and
GATEWAY_PORT / GATEWAY_ADMIN_PORT) over the config's ports, demo upstreams where the config's
routes point, and an admin token for the web page, made into the data directory and shown once
on a terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import GatewayProcess, gateway_command, write_config
from tests.support.redis_server import RedisServer, free_port

CURL_LINE = re.compile(r"curl .*Authorization: Api-Key (gwk_[0-9A-Za-z]+).*$", re.MULTILINE)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gwfirst-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_for(probe: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def echo_route(name: str, port: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "prefix": f"/{name}/", "upstream": f"http://127.0.0.1:{port}",
            "strip_prefix": True, **fields}


def test_port_flags_win_over_the_config_and_demo_upstreams_follow_its_routes(
        tmp_path: Path, redis_clean: RedisServer, data_dir: Path) -> None:
    vision, speech = free_port(), free_port()
    routes = [echo_route("vision", vision, scopes=["yc.ai.vision.execute"]),
              echo_route("speech", speech, scopes=["yc.ai.speechkitStt.execute"]),
              # Not on this host: the demo serves nothing for it.
              {"name": "remote", "prefix": "/remote/", "upstream": "http://192.0.2.1:9101"}]
    config_path, file_port, file_admin_port = write_config(
        tmp_path / "g.yaml", redis_clean.url, routes, data_dir=str(data_dir))
    port, admin_port = free_port(), free_port()
    gateway = GatewayProcess(config_path, port, admin_port, extra_args=(
        "--workers", "1", "--port", str(port), "--admin-port", str(admin_port), "--demo"))
    try:
        gateway.start()
        found = wait_for(lambda: CURL_LINE.search(gateway.log()))
        assert found, gateway.log()
        assert f"localhost:{port}/vision/any/path?x=1" in found.group(0)
        key = {"Authorization": f"Api-Key {found.group(1)}"}
        for service in ("vision", "speech"):
            status, body = get(f"{gateway.url}/{service}/a/b?x=1", key)
            assert status == 200, body
            echo = json.loads(body)
            assert (echo["service"], echo["path"], echo["query"]) == (service, "/a/b", "x=1")
        assert refused(file_port) and refused(file_admin_port)
        assert gateway.stop() == 0
    finally:
        gateway.stop()


def test_port_variables_win_over_the_config_with_workers(
        tmp_path: Path, redis_clean: RedisServer, data_dir: Path) -> None:
    upstream = free_port()
    config_path, file_port, file_admin_port = write_config(
        tmp_path / "g.yaml", redis_clean.url, [echo_route("open", upstream, public=True)],
        data_dir=str(data_dir))
    port, admin_port = free_port(), free_port()
    gateway = GatewayProcess(config_path, port, admin_port,
                             env={"GATEWAY_PORT": str(port),
                                  "GATEWAY_ADMIN_PORT": str(admin_port)},
                             extra_args=("--workers", "2", "--demo"))
    try:
        gateway.start()
        status, body = get(f"{gateway.url}/open/x")
        assert status == 200, body
        assert json.loads(body)["service"] == "open"
        assert refused(file_port) and refused(file_admin_port)
        assert gateway.stop() == 0
    finally:
        gateway.stop()


@pytest.mark.parametrize(("variable", "value"), [("GATEWAY_PORT", "http"),
                                                 ("GATEWAY_ADMIN_PORT", "70000")])
def test_a_bad_port_variable_is_a_config_error(tmp_path: Path, variable: str,
                                               value: str) -> None:
    config_path, _, _ = write_config(tmp_path / "g.yaml", "redis://127.0.0.1:1", [],
                                     data_dir=str(tmp_path / "data"))
    result = subprocess.run(gateway_command("run", "--config", str(config_path)),
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, variable: value})
    assert result.returncode != 0
    assert f"{config_path}: {variable}: {value!r} is not a port number (expected 0 to 65535)" \
        in result.stderr, result.stderr


def test_demo_makes_an_admin_token_shows_it_once_on_a_terminal_and_reuses_it(
        tmp_path: Path, redis_clean: RedisServer, data_dir: Path) -> None:
    config_path, port, admin_port = write_config(tmp_path / "g.yaml", redis_clean.url, [],
                                                 data_dir=str(data_dir))
    gateway = GatewayProcess(config_path, port, admin_port, extra_args=("--workers", "1",
                                                                        "--demo"),
                             terminal=True)
    token_file = data_dir / "admin.token"
    page = f"http://127.0.0.1:{admin_port}/ui/"
    try:
        gateway.start()
        assert wait_for(lambda: "Admin token" in gateway.log()), gateway.log()
        token = token_file.read_text().strip()
        assert len(token) >= 40
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        first = gateway.log()
        assert page in first and str(token_file) in first
        assert first.count(token) == 1, first

        # The page and the API it calls answer with that token, as the admin token.
        assert get(page)[0] == 200
        status, body = get(f"{gateway.admin_url}/admin/accounts",
                           {"Authorization": f"Bearer {token}"})
        assert status == 200, body
        assert get(f"{gateway.admin_url}/admin/accounts",
                   {"Authorization": "Bearer wrong"})[0] == 401
        assert gateway.stop() == 0

        size = len(gateway.log())
        gateway.start()  # a later start: the same token, said where, never shown again
        later = wait_for(lambda: (text := gateway.log()[size:]) and str(token_file) in text
                         and text)
        assert later and page in later, gateway.log()
        assert token not in later
        assert token_file.read_text().strip() == token
        status, _ = get(f"{gateway.admin_url}/admin/accounts",
                        {"Authorization": f"Bearer {token}"})
        assert status == 200
        assert gateway.stop() == 0
    finally:
        gateway.stop()


def test_off_a_terminal_the_admin_token_is_made_but_not_shown(
        tmp_path: Path, redis_clean: RedisServer, data_dir: Path) -> None:
    config_path, port, admin_port = write_config(tmp_path / "g.yaml", redis_clean.url, [],
                                                 data_dir=str(data_dir))
    token_file = data_dir / "admin.token"
    configured = GatewayProcess(config_path, port, admin_port,
                                env={"GATEWAY_ADMIN_TOKEN": "configured-token"},
                                extra_args=("--workers", "1", "--demo"))
    try:  # a configured token is the one, and no file is made
        configured.start()
        status, _ = get(f"{configured.admin_url}/admin/accounts",
                        {"Authorization": "Bearer configured-token"})
        assert status == 200
        assert not token_file.exists()
        assert "admin token" not in configured.log().lower()
        assert configured.stop() == 0
    finally:
        configured.stop()

    gateway = GatewayProcess(config_path, port, admin_port, extra_args=("--workers", "1",
                                                                        "--demo"))
    try:
        gateway.start()
        token = token_file.read_text().strip()
        assert wait_for(lambda: str(token_file) in gateway.log()), gateway.log()
        assert "not shown" in gateway.log()
        assert token not in gateway.log()
        status, _ = get(f"{gateway.admin_url}/admin/accounts",
                        {"Authorization": f"Bearer {token}"})
        assert status == 200
        assert get(f"{gateway.admin_url}/admin/accounts",
                   {"Authorization": "Bearer configured-token"})[0] == 401
        assert gateway.stop() == 0
    finally:
        gateway.stop()
