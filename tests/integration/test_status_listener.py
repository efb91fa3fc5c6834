"""The status listener (issue 19): /healthz, /readyz and /metrics without a token, apart from
the admin listener, on real sockets: in one process, and under `gateway run --workers 2` where
the supervisor serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import gateway_version
from tests.conftest import GatewayUnderTest, make_config
from tests.integration.test_process_model import (
    ADMIN_TOKEN,
    echo_app,
    launch_fixture,  # noqa: F401 (registers the `launch` fixture here)
    route,
    short_dir_fixture,  # noqa: F401 (registers the `short_dir` fixture here)
)
from tests.support.redis_server import RedisServer, free_port

# Paths the admin listener serves that the status listener must not.
NOT_SERVED = ["/admin/keys", "/admin/accounts", "/admin/openapi.json", "/admin/reload", "/ui",
              "/ui/", "/ui/index.html", "/", "/healthz/", "/metrics/x"]


async def check_status_listener(session: aiohttp.ClientSession, url: str,
                                metric: str) -> None:
    async with session.get(url + "/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    async with session.get(url + "/readyz") as response:
        assert response.status == 200
        # The verdict alone: no store address, config path or hash on a reachable port.
        assert await response.json() == {"status": "ready"}
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert metric in await response.text()
    for path in NOT_SERVED:
        for auth in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
            async with session.get(url + path, headers=auth) as response:
                assert response.status == 404, path
    async with session.post(url + "/admin/reload",
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        assert response.status in (404, 405)
    async with session.post(url + "/readyz") as response:
        assert response.status == 405


async def test_status_listener_in_one_process(redis_clean: RedisServer, start_gateway: Any,
                                              http: aiohttp.ClientSession) -> None:
    config = make_config(redis_clean.url, [], status={"host": "127.0.0.1", "port": 0},
                         admin={"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN})
    gateway: GatewayUnderTest = await start_gateway(config)
    assert gateway.running.status_port is not None
    await check_status_listener(http, f"http://127.0.0.1:{gateway.running.status_port}",
                                "gateway_store_up")
    # The admin listener is unchanged: its /readyz keeps the details for operators.
    async with http.get(gateway.admin_url + "/readyz") as response:
        body = await response.json()
        assert response.status == 200 and "config_hash" in body and "store" in body


async def test_no_status_listener_by_default(redis_clean: RedisServer,
                                             start_gateway: Any) -> None:
    gateway: GatewayUnderTest = await start_gateway(make_config(redis_clean.url, []))
    assert gateway.running.status_port is None


async def test_status_listener_is_served_by_the_supervisor(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    upstream = await serve_app(echo_app("one"))
    status_port = free_port()
    gateway = await launch(redis_clean.url, [route("one", str(upstream.make_url("")))],
                           status={"host": "127.0.0.1", "port": status_port})
    async with aiohttp.ClientSession() as session:
        # Metrics aggregated over the workers, as the admin listener's.
        await check_status_listener(session, f"http://127.0.0.1:{status_port}",
                                    "gateway_requests_in_flight")
    # The supervisor, not a worker, holds the port: one listening socket, in its process.
    inodes = listening_sockets(status_port)
    assert len(inodes) == 1
    assert f"socket:[{inodes.pop()}]" in open_files(gateway.pid)


def listening_sockets(port: int) -> set[str]:
    """Inodes of the IPv4 sockets listening on `port` (state 0A in /proc/net/tcp)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[9] for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A"}


def open_files(pid: int) -> set[str]:
    return {str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()}


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


async def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        return samples(await response.text())


async def test_build_and_runtime_metrics_in_one_process(
        redis_clean: RedisServer, start_gateway: Any) -> None:
    config = make_config(redis_clean.url, [], status={"host": "127.0.0.1", "port": 0})
    gateway: GatewayUnderTest = await start_gateway(config)
    for url in (gateway.admin_url, f"http://127.0.0.1:{gateway.running.status_port}"):
        found = await scrape(url)
        [(labels, value)] = found["gateway_build_info"]
        assert value == 1 and labels["version"] == gateway_version() != "unknown"
        assert labels["python"].count(".") == 2
        assert found["process_resident_memory_bytes"][0][1] > 10_000_000
        assert found["process_open_fds"][0][1] > 5
        assert found["process_start_time_seconds"][0][1] > 1_600_000_000
        assert "python_info" in found
        assert {labels["generation"] for labels, _ in
                found["python_gc_collections_total"]} == {"0", "1", "2"}


async def test_build_and_per_process_metrics_under_workers(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    upstream = await serve_app(echo_app("one"))
    status_port = free_port()
    gateway = await launch(redis_clean.url, [route("one", str(upstream.make_url("")))],
                           status={"host": "127.0.0.1", "port": status_port})
    for url in (gateway.admin_url, f"http://127.0.0.1:{status_port}"):
        found = await scrape(url)
        [(labels, value)] = found["gateway_build_info"]
        assert value == 1 and labels["version"] == gateway_version()
        assert "python_info" in found
        # process_* of the supervisor and of each worker, told apart by `process`.
        memory = {labels["process"]: value
                  for labels, value in found["process_resident_memory_bytes"]}
        assert set(memory) == {"supervisor", "worker-0", "worker-1"}
        assert all(value > 10_000_000 for value in memory.values())
        assert len({labels["process"] for labels, _ in found["process_cpu_seconds_total"]}) == 3
