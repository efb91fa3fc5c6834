"""One data directory, one server, one owner (SPEC §7; issue 18, item 1): real `gateway`
processes, real servers, real sockets.

Before, a CLI command that got no PONG within 0.5 s started a second server on the same folder
and, on exit, removed the socket of the live one; 18 commands run at once started Redis 12 times
and two failed, one after writing."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.errors import StoreUnavailable
from gateway.store.embedded import EmbeddedRedis
from gateway.store.ownership import LockFile, ping_socket
from tests.support.embedded_store import (
    clean_env,
    cli,
    server_lifetimes,
    servers_on,
    stop_leftovers,
)
from tests.support.processes import GatewayProcess, gateway_command, write_config

PARALLEL = 20


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short, so the unix socket path stays under the kernel's 107-byte limit.
    path = Path(tempfile.mkdtemp(prefix="gwown-", dir="/tmp"))
    yield path
    stop_leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def readyz(gateway: GatewayProcess) -> int:
    try:
        with urllib.request.urlopen(gateway.admin_url + "/readyz", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_parallel_cli_commands_without_a_gateway_share_one_server(tmp_path: Path,
                                                                  data_dir: Path) -> None:
    config_path, _, _ = write_config(tmp_path / "g.yaml", "embedded", [],
                                     data_dir=str(data_dir))
    commands = [subprocess.Popen(
        gateway_command("accounts", "create", f"parallel-{n}", "--json",
                        "--config", str(config_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
        for n in range(PARALLEL)]
    outcomes = [command.communicate(timeout=180) for command in commands]
    failed = [(command.returncode, err) for command, (_, err) in zip(commands, outcomes,
                                                                      strict=True)
              if command.returncode != 0]
    assert failed == [], failed
    created = {json.loads(out)["name"]: json.loads(out)["id"] for out, _ in outcomes}
    assert len(created) == PARALLEL

    started, most = server_lifetimes((data_dir / "redis.log").read_text())
    print(f"{PARALLEL} commands: {started} server start(s), at most {most} at once")
    assert most == 1, f"{most} servers ran at once on one data directory"
    assert 1 <= started <= PARALLEL
    # The last command out stopped the server: nothing runs, nobody holds the lock.
    assert servers_on(data_dir) == []
    with LockFile(data_dir / "server.lock") as lock:
        assert lock.try_lock()

    listing = cli(config_path, "accounts", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    stored = {row["name"]: row["id"] for row in json.loads(listing.stdout)}
    assert stored == created  # every write is there
    assert servers_on(data_dir) == []


def test_a_cli_command_waits_for_a_paused_store_and_leaves_it_to_the_gateway(
        tmp_path: Path, data_dir: Path) -> None:
    config_path, port, admin_port = write_config(tmp_path / "g.yaml", "embedded", [],
                                                 data_dir=str(data_dir))
    gateway = GatewayProcess(config_path, port, admin_port).start()
    socket_path = data_dir / "redis.sock"
    try:
        with redis.Redis(unix_socket_path=str(socket_path)) as client:
            server_pid = int(client.info("server")["process_id"])
            client.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        began = time.monotonic()
        result = cli(config_path, "accounts", "create", "during-pause", "--json")
        took = time.monotonic() - began
        assert result.returncode == 0, result.stderr
        assert took >= 2.5, f"did not wait for the paused server ({took:.1f} s)"
        assert "does not answer" in result.stderr  # it said why it waited
        # The same server, on the same socket; no second one was ever started.
        assert servers_on(data_dir) == [server_pid]
        with redis.Redis(unix_socket_path=str(socket_path)) as client:
            assert int(client.info("server")["process_id"]) == server_pid
        deadline = time.monotonic() + 15
        while readyz(gateway) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert readyz(gateway) == 200, gateway.log()
        listing = cli(config_path, "accounts", "list", "--json")
        assert [row["name"] for row in json.loads(listing.stdout)] == ["during-pause"]
        assert servers_on(data_dir) == [server_pid]  # the CLI left it to the gateway
    finally:
        assert gateway.stop() == 0, gateway.log()
    assert servers_on(data_dir) == []  # the gateway, the last user, stopped it
    assert not ping_socket(socket_path)


@pytest.fixture
def fake_store(data_dir: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def start_fake(started: list[subprocess.Popen[str]], data_dir: Path, *args: str
               ) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "tests.support.fake_store",
                                str(data_dir), *args], stdout=subprocess.PIPE, text=True)
    started.append(process)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_a_loading_server_is_waited_for_then_joined(data_dir: Path, fake_store,
                                                    caplog) -> None:
    fake = start_fake(fake_store, data_dir, "loading", "2.5")
    caplog.set_level(logging.WARNING, logger="gateway.store.embedded")
    store = EmbeddedRedis(data_dir)
    began = time.monotonic()
    assert store.start() == f"unix://{data_dir / 'redis.sock'}"
    assert time.monotonic() - began >= 2.0
    assert "is loading its data" in caplog.text
    assert store.started_pid is None  # joined, not started
    assert not (data_dir / "server.json").exists()
    assert servers_on(data_dir) == []  # no real server beside it
    assert (data_dir / "redis.sock").exists()
    store.stop()  # the last user: it stops the server it joined
    assert fake.wait(10) != 0
    with LockFile(data_dir / "server.lock") as lock:
        assert lock.try_lock()


def test_a_silent_server_holding_the_lock_is_never_replaced(data_dir: Path,
                                                            fake_store) -> None:
    fake = start_fake(fake_store, data_dir, "silent")
    store = EmbeddedRedis(data_dir, answer_timeout=2)
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.start()
    assert 2 <= time.monotonic() - began < 10
    message = str(caught.value)
    assert f"pid {fake.pid}" in message and "No second server was started" in message, message
    assert fake.poll() is None  # still running, its socket still in place
    assert (data_dir / "redis.sock").exists()
    assert servers_on(data_dir) == []
    store.stop()  # it never joined: nothing to stop
    assert fake.poll() is None


def test_a_server_the_starter_leaves_lives_on_for_the_other_users(data_dir: Path) -> None:
    first, second = EmbeddedRedis(data_dir), EmbeddedRedis(data_dir)
    first.start()
    second.start()
    assert first.started_pid is not None and second.started_pid is None
    with redis.Redis(unix_socket_path=str(first.socket_path)) as client:
        client.set(b"gw:test", b"1")
    first.stop()  # the starter leaves first: the server stays for the other user
    assert servers_on(data_dir) == [first.started_pid]
    with redis.Redis(unix_socket_path=str(second.socket_path)) as client:
        assert client.get(b"gw:test") == b"1"
    second.stop()  # the last one out stops it
    assert servers_on(data_dir) == []
    assert not ping_socket(data_dir / "redis.sock")
