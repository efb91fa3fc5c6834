"""Embedded and external Redis (SPEC §7) and the health endpoints (SPEC §9)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import pytest
import redis

from gateway.config import build_config
from gateway.server import serve
from gateway.store.embedded import EmbeddedRedis, ping_socket
from tests.conftest import make_config
from tests.support.processes import GatewayProcess, write_config


@pytest.fixture
def data_dir():  # type: ignore[no-untyped-def]
    # Short, so the unix socket path stays under the kernel's 107-byte limit.
    path = Path(tempfile.mkdtemp(prefix="gwdata-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _embedded_config(data_dir: Path):  # type: ignore[no-untyped-def]
    return build_config({"listen": {"host": "127.0.0.1", "port": 0},
                         "admin": {"host": "127.0.0.1", "port": 0},
                         "data_dir": str(data_dir)}, "<test>")


async def test_embedded_redis_keeps_data_across_restarts(data_dir) -> None:
    config = _embedded_config(data_dir)
    async with serve(config) as running:
        assert running.redis_url == f"unix://{data_dir / 'redis.sock'}"
        await running.redis.set(b"gw:test", b"survives")
        info = await running.redis.info("persistence")
        assert info["aof_enabled"] == 1
    # The gateway stopped its private server on the way out.
    assert not ping_socket(data_dir / "redis.sock")
    assert (data_dir / "appendonly.aof").exists() or (data_dir / "appendonlydir").exists()

    async with serve(config) as running:
        assert await running.redis.get(b"gw:test") == b"survives"


async def test_embedded_redis_socket_is_private_and_there_is_no_tcp_port(data_dir) -> None:
    async with serve(_embedded_config(data_dir)) as running:
        mode = stat.S_IMODE(os.stat(data_dir / "redis.sock").st_mode)
        assert mode & 0o077 == 0
        assert stat.S_IMODE(os.stat(data_dir).st_mode) & 0o077 == 0
        config = await running.redis.config_get("port")
        assert config["port"] == "0"


async def test_a_running_embedded_redis_is_joined_not_started_twice(data_dir) -> None:
    first = EmbeddedRedis(data_dir)
    first.start()
    try:
        async with serve(_embedded_config(data_dir)) as running:
            await running.redis.set(b"k", b"v")
        # The gateway did not own it, so it left it running for its owner.
        assert ping_socket(data_dir / "redis.sock")
        with redis.Redis(unix_socket_path=str(data_dir / "redis.sock")) as client:
            assert client.get(b"k") == b"v"
    finally:
        first.stop()
    assert not ping_socket(data_dir / "redis.sock")


def test_gateway_process_stops_its_embedded_redis_on_sigterm(tmp_path, data_dir) -> None:
    config_path, port, admin_port = write_config(tmp_path / "g.yaml", "embedded", [],
                                                 data_dir=str(data_dir))
    gateway = GatewayProcess(config_path, port, admin_port).start()
    with redis.Redis(unix_socket_path=str(data_dir / "redis.sock")) as client:
        client.set(b"written", b"1")
        redis_pid = int(client.info("server")["process_id"])
    assert gateway.stop(signal.SIGTERM) == 0, gateway.log()
    assert not ping_socket(data_dir / "redis.sock")
    assert not _alive(redis_pid)

    gateway.start()
    try:
        with redis.Redis(unix_socket_path=str(data_dir / "redis.sock")) as client:
            assert client.get(b"written") == b"1"
    finally:
        assert gateway.stop() == 0


def _alive(pid: int) -> bool:
    """Whether `pid` runs. The embedded server daemonizes, so once it exits it waits for init to
    reap it: a zombie (state Z) has exited too, where init does not reap (some containers)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


@pytest.mark.parametrize("which", ["unix", "tcp"])
async def test_external_redis_urls(redis_clean, start_gateway, http, which) -> None:
    url = redis_clean.url if which == "unix" else redis_clean.tcp_url
    gateway = await start_gateway(make_config(url, []))
    await gateway.running.redis.set(b"via", which.encode())
    assert redis_clean.client().get(b"via") == which.encode()
    async with http.get(gateway.admin_url + "/readyz") as response:
        assert response.status == 200


async def test_health_and_readiness_follow_the_real_store(own_redis, start_gateway,
                                                          http) -> None:
    gateway = await start_gateway(make_config(own_redis.url, []))
    async with http.get(gateway.admin_url + "/healthz") as response:
        assert response.status == 200
    async with http.get(gateway.admin_url + "/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"

    own_redis.stop()
    async with http.get(gateway.admin_url + "/readyz") as response:
        assert response.status == 503
        body = await response.json()
    assert body["status"] == "unavailable"
    assert "key store" in body["reason"]
    async with http.get(gateway.admin_url + "/healthz") as response:
        assert response.status == 200  # still serving: liveness is not readiness

    own_redis.start()
    async with http.get(gateway.admin_url + "/readyz") as response:
        assert response.status == 200
