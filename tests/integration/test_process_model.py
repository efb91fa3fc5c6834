"""The process model and hot reload (SPEC §9, issue 6) as an operator meets them: the real
`gateway run --workers N` command, real worker processes sharing one port, real signals, a real
Redis and real upstream servers.

Worker processes are the supervisor's children started by multiprocessing's spawn method; the
resource tracker is a child too, and is told apart by its command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.keys.service import KeyService
from tests.conftest import api_key, new_key
from tests.support.processes import GatewayProcess, write_config
from tests.support.redis_server import RedisServer

ADMIN_TOKEN = "process-model-admin-token-5b0c1e9d27"
RECOVERY = 10.0  # generous bound for a replaced worker, a reload, a drain to show


# -- helpers shared with test_metrics_and_logs ---------------------------------------------------

def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.update(int(child) for child in (task / "children").read_text().split())
    return found


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (spawned children that are not the resource tracker)."""
    workers = set()
    for pid in children(supervisor):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if (b"multiprocessing.spawn" in cmdline and b"spawn_main" in cmdline
                and b"resource_tracker" not in cmdline):
            workers.add(pid)
    return workers


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool],
                     within: float = RECOVERY, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


def fresh_session(**options: Any) -> aiohttp.ClientSession:
    """A client that opens a new connection for every request, so the kernel spreads them over
    the workers (SO_REUSEPORT hashes each connection)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=15), **options)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()[:16]


def rewrite(path: Path, data: dict[str, Any]) -> str:
    """Replace the config file atomically; return the hash the gateway will show for it."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(yaml.safe_dump(data))
    os.replace(temporary, path)
    return file_digest(path)


def echo_app(name: str) -> web.Application:
    """An upstream that says who it is and what it got."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"upstream": name, "path": request.path_qs,
                                  "method": request.method, "bytes": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def route(name: str, upstream: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "prefix": f"/{name}/", "upstream": upstream, "strip_prefix": True,
            **options}


class Gateway:
    """A `gateway run` process with its config file, which tests rewrite to reload."""

    def __init__(self, directory: Path, redis_url: str, routes: list[dict[str, Any]],
                 workers: int, **sections: Any) -> None:
        self.directory = directory
        sections.setdefault("data_dir", str(directory / "data"))
        self.path, port, admin_port = write_config(directory / "gateway.yaml", redis_url,
                                                   routes, **sections)
        self.data: dict[str, Any] = yaml.safe_load(self.path.read_text())
        self.process = GatewayProcess(self.path, port, admin_port,
                                      env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                                      extra_args=("--workers", str(workers)))

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def admin_url(self) -> str:
        return self.process.admin_url

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start(self) -> Gateway:
        await asyncio.to_thread(self.process.start)
        return self

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        # In a thread: the upstreams run on this event loop and must answer while it drains.
        return await asyncio.to_thread(self.process.stop, sig)

    def log(self) -> str:
        return self.process.log()

    def write(self, data: dict[str, Any]) -> str:
        return rewrite(self.path, data)

    async def ready(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, \
                session.get(self.admin_url + "/readyz") as response:
            return response.status, await response.json()

    async def config_hash(self) -> str:
        status, body = await self.ready()
        assert status == 200, body
        return str(body["config_hash"])

    async def wait_for_hash(self, digest: str) -> None:
        async def shown() -> bool:
            status, body = await self.ready()
            return status == 200 and body.get("config_hash") == digest

        assert await eventually(shown), f"/readyz never showed config {digest}:\n{self.log()}"

    async def admin_reload(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.post(
                self.admin_url + "/admin/reload",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
            if response.content_type != "application/json":
                return response.status, {"text": await response.text()}
            return response.status, await response.json()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, \
                session.get(self.admin_url + "/metrics") as response:
            assert response.status == 200
            return await response.text()


@pytest.fixture(name="short_dir")
def short_dir_fixture() -> Iterator[Path]:
    """A short directory under /tmp for the config, the log and the data dir (metric files)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="gw6-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="launch")
async def launch_fixture(short_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start gateway processes; whatever is still running at the end is stopped."""
    started: list[Gateway] = []

    async def start(redis_url: str, routes: list[dict[str, Any]], workers: int = 2,
                    **sections: Any) -> Gateway:
        directory = short_dir / str(len(started))
        directory.mkdir()
        gateway = Gateway(directory, redis_url, routes, workers, **sections)
        started.append(gateway)
        return await gateway.start()

    yield start
    for gateway in started:
        if gateway.process.process is not None:
            await gateway.stop()


async def get_status(session: aiohttp.ClientSession, url: str,
                     headers: dict[str, str] | None = None) -> int:
    async with session.get(url, headers=headers) as response:
        await response.read()
        return response.status


async def statuses(url: str, count: int, headers: dict[str, str] | None = None,
                   parallel: int = 5) -> Counter[int]:
    """`count` GETs over fresh connections, `parallel` at a time."""
    seen: Counter[int] = Counter()
    async with fresh_session() as session:
        for start in range(0, count, parallel):
            batch = [get_status(session, url, headers)
                     for _ in range(min(parallel, count - start))]
            seen.update(await asyncio.gather(*batch))
    return seen


class Traffic:
    """Requests sent in a loop until stopped, counting successes and failures."""

    def __init__(self, url: str, headers: dict[str, str] | None = None,
                 fresh: bool = True) -> None:
        self.url = url
        self.headers = headers
        self.fresh = fresh
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        session = fresh_session() if self.fresh else aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=15))
        async with session:
            while not self._stop.is_set():
                try:
                    status = await get_status(session, self.url, self.headers)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures[type(exc).__name__] += 1
                    await asyncio.sleep(0.01)
                    continue
                if status == 200:
                    self.ok += 1
                else:
                    self.failures[str(status)] += 1

    def start(self) -> Traffic:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def wait_for(self, ok: int) -> None:
        assert await eventually(lambda: self.ok >= ok), (self.ok, self.failures)


def requests_counted(metrics: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(metrics)
               for sample in family.samples if sample.name == "gateway_requests_total")


# -- (a) a worker that dies is replaced ----------------------------------------------------------

@pytest.mark.slow
async def test_a_killed_worker_is_replaced_while_traffic_goes_on(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    upstream = await serve_app(echo_app("one"))
    gateway = await launch(redis_clean.url,
                           [route("open", str(upstream.make_url("")), public=True)])
    before = worker_pids(gateway.pid)
    assert len(before) == 2, (before, children(gateway.pid))

    loads = [Traffic(gateway.url + "/open/x").start(),
             Traffic(gateway.url + "/open/y", fresh=False).start()]
    for load in loads:
        await load.wait_for(20)
    counted_before = requests_counted(await gateway.metrics())
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = worker_pids(gateway.pid)
        return len(now) == 2 and victim not in now

    assert await eventually(replaced), (worker_pids(gateway.pid), gateway.log())
    after = worker_pids(gateway.pid)
    assert len(after - before) == 1  # one new worker, the survivor untouched

    async def ready() -> bool:
        return (await gateway.ready())[0] == 200

    assert await eventually(ready), gateway.log()
    served = [load.ok for load in loads]
    await asyncio.sleep(0.3)  # the load runs on after recovery
    for load in loads:
        await load.stop()
    # Failures around the kill are allowed (connections of the killed worker break); counted
    # only to be shown if something else goes wrong.
    failures = sum((load.failures for load in loads), Counter())
    assert all(load.ok > count for load, count in zip(loads, served, strict=True)), failures
    assert f"(pid {victim}) exited" in gateway.log(), gateway.log()

    # After recovery, 100 consecutive requests over fresh connections (so both workers, the
    # new one too, serve some) all succeed.
    assert await statuses(gateway.url + "/open/z", 100) == Counter({200: 100}), failures
    # The killed worker's in-flight gauge went with it.
    # (Workers write their counts every 0.1 s, so the scrape is polled.) What the dead worker
    # had counted is still counted: counters never go back.
    async def settled() -> bool:
        text = await gateway.metrics()
        return "gateway_requests_in_flight 0.0" in text and \
            requests_counted(text) >= counted_before + 100

    assert await eventually(settled), await gateway.metrics()


# -- (b) SIGTERM drains ------------------------------------------------------------------------

@pytest.mark.slow
async def test_sigterm_lets_a_slow_request_finish_flushes_last_use_and_exits_cleanly(
        redis_clean: RedisServer, key_service: KeyService, serve_app: Any,
        launch: Any) -> None:
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(2.0)
        return web.json_response({"slow": "done"})

    slow_app = web.Application()
    slow_app.router.add_get("/{tail:.*}", slow)
    slow_upstream = await serve_app(slow_app)
    fast_upstream = await serve_app(echo_app("fast"))
    quick_key, quick_secret, _ = await new_key(key_service, ("svc.use",))
    slow_key, slow_secret, _ = await new_key(key_service, ("svc.use",))
    gateway = await launch(
        redis_clean.url,
        [route("fast", str(fast_upstream.make_url("")), scopes=["svc.use"]),
         route("slow", str(slow_upstream.make_url("")), scopes=["svc.use"])],
        keys={"last_used_flush": "60s"})
    descendants_before = descendants(gateway.pid)
    assert len(worker_pids(gateway.pid)) == 2

    async with fresh_session() as session:
        assert await get_status(session, gateway.url + "/fast/x", api_key(quick_secret)) == 200

        async def slow_request() -> tuple[int, dict[str, Any]]:
            async with session.get(gateway.url + "/slow/x",
                                   headers=api_key(slow_secret)) as response:
                return response.status, await response.json()

        in_flight = asyncio.ensure_future(slow_request())
        await asyncio.wait_for(entered.wait(), RECOVERY)
        # Counted in flight, over both workers' files (written every 0.1 s: polled).
        async def counted_in_flight() -> bool:
            return "gateway_requests_in_flight 1.0" in await gateway.metrics()

        assert await eventually(counted_in_flight), await gateway.metrics()
        # Only the shutdown flush can write last use: the periodic one is a minute away.
        assert await key_service.last_used(quick_key.id) is None
        gateway.process.process.send_signal(signal.SIGTERM)

        async def refused() -> bool:
            # SIGTERM stops accepting: a new connection is refused (or, when it raced the
            # listener closing, reset unserved) while the slow request is still being served.
            try:
                await get_status(session, gateway.url + "/fast/x", api_key(quick_secret))
            except aiohttp.ClientConnectionError:
                return True
            return in_flight.done()

        assert await eventually(refused, 5.0)
        assert not in_flight.done(), "the proxy kept accepting until the slow request ended"
        status, body = await asyncio.wait_for(in_flight, RECOVERY)
    assert (status, body) == (200, {"slow": "done"})

    assert gateway.process.process is not None
    code = await asyncio.to_thread(gateway.process.process.wait, 30)
    gateway.process.process = None
    assert code == 0, gateway.log()
    assert await eventually(lambda: not any(running(pid) for pid in descendants_before)), [
        pid for pid in descendants_before if running(pid)]

    assert await key_service.last_used(quick_key.id) is not None, gateway.log()
    assert await key_service.last_used(slow_key.id) is not None, gateway.log()


# -- hot reload ----------------------------------------------------------------------------------

@pytest.mark.slow
async def test_sighup_adds_a_route_on_every_worker(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    one = await serve_app(echo_app("one"))
    two = await serve_app(echo_app("two"))
    gateway = await launch(redis_clean.url, [route("a", str(one.make_url("")), public=True)])
    old_hash = await gateway.config_hash()
    assert await statuses(gateway.url + "/b/x", 10) == Counter({404: 10})

    data = gateway.data
    data["routes"].append(route("b", str(two.make_url("")), public=True))
    new_hash = gateway.write(data)
    assert new_hash != old_hash
    os.kill(gateway.pid, signal.SIGHUP)
    await gateway.wait_for_hash(new_hash)

    async with fresh_session() as session:
        for _ in range(30):
            async with session.get(gateway.url + "/b/x") as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["upstream"] == "two"
    assert await statuses(gateway.url + "/a/x", 10) == Counter({200: 10})
    assert len(worker_pids(gateway.pid)) == 2  # reloaded in place, nothing restarted
    assert "gateway_config_reloads_total{result=\"ok\"} 1.0" in await gateway.metrics()


@pytest.mark.slow
async def test_sighup_reload_in_a_single_process(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    one = await serve_app(echo_app("one"))
    two = await serve_app(echo_app("two"))
    gate, entered = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        entered.set()
        await gate.wait()
        return web.Response(text="finished on the old config")

    held_app = web.Application()
    held_app.router.add_get("/{tail:.*}", held)
    held_upstream = await serve_app(held_app)
    gateway = await launch(redis_clean.url,
                           [route("a", str(one.make_url("")), public=True),
                            route("held", str(held_upstream.make_url("")), public=True)],
                           workers=1)
    assert worker_pids(gateway.pid) == set()
    assert await statuses(gateway.url + "/b/x", 3) == Counter({404: 3})

    async with fresh_session() as session:
        held_request = asyncio.ensure_future(get_status(session, gateway.url + "/held/x"))
        await asyncio.wait_for(entered.wait(), RECOVERY)

        data = gateway.data
        data["routes"] = [{**data["routes"][0], "prefix": "/renamed/"},  # a changed route,
                          route("b", str(two.make_url("")), public=True)]  # an added one,
        new_hash = gateway.write(data)  # and "held" removed
        os.kill(gateway.pid, signal.SIGHUP)
        await gateway.wait_for_hash(new_hash)
        # A request in flight finishes on the config it started on.
        gate.set()
        assert await asyncio.wait_for(held_request, RECOVERY) == 200
    assert await statuses(gateway.url + "/b/x", 10) == Counter({200: 10})
    assert await statuses(gateway.url + "/renamed/x", 5) == Counter({200: 5})
    assert await statuses(gateway.url + "/a/x", 5) == Counter({404: 5})
    assert await statuses(gateway.url + "/held/x", 5) == Counter({404: 5})
    assert "config reloaded" in gateway.log()


@pytest.mark.slow
async def test_twenty_reloads_under_continuous_traffic_drop_nothing(
        redis_clean: RedisServer, key_service: KeyService, serve_app: Any,
        launch: Any) -> None:
    one = await serve_app(echo_app("one"))
    two = await serve_app(echo_app("two"))
    _, secret, _ = await new_key(key_service, ("svc.use",))
    gateway = await launch(redis_clean.url,
                           [route("a", str(one.make_url("")), scopes=["svc.use"])])
    base = gateway.data
    with_b = {**base, "routes": [*base["routes"], route("b", str(two.make_url("")),
                                                        public=True)]}

    loads = [Traffic(gateway.url + "/a/x", api_key(secret)).start(),
             Traffic(gateway.url + "/a/y", api_key(secret), fresh=False).start()]
    for load in loads:
        await load.wait_for(5)
    for number in range(1, 21):
        digest = gateway.write(with_b if number % 2 else base)
        if number % 2:
            os.kill(gateway.pid, signal.SIGHUP)
            await gateway.wait_for_hash(digest)
        else:
            status, body = await gateway.admin_reload()
            assert (status, body["config_hash"]) == (200, digest), body
        await asyncio.sleep(0.05)  # let some traffic through each config
    for load in loads:
        await load.stop()

    assert [dict(load.failures) for load in loads] == [{}, {}]
    assert all(load.ok >= 20 for load in loads), [load.ok for load in loads]
    # The last config has no route b again: removed on every worker.
    assert await statuses(gateway.url + "/b/x", 20) == Counter({404: 20})
    assert "gateway_config_reloads_total{result=\"ok\"} 20.0" in await gateway.metrics()


def reload_count(metrics: str, result: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if (sample.name == "gateway_config_reloads_total"
                    and sample.labels.get("result") == result):
                return sample.value
    return 0.0


@pytest.mark.slow
async def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    one = await serve_app(echo_app("one"))
    gateway = await launch(redis_clean.url, [route("a", str(one.make_url("")), public=True)])
    old_hash = await gateway.config_hash()
    errors_before = reload_count(await gateway.metrics(), "error")

    good = gateway.data
    bad = {**good, "routes": [{**good["routes"][0], "timeout": "soon"}]}
    gateway.write(bad)
    status, body = await gateway.admin_reload()
    assert status == 422, body
    assert body["error"]["code"] == "invalid_config"
    assert str(gateway.path) in body["error"]["message"]
    assert "routes[0].timeout" in body["error"]["message"]
    assert await eventually(lambda: "config reload refused" in gateway.log()), gateway.log()
    assert "routes[0].timeout" in gateway.log()
    assert reload_count(await gateway.metrics(), "error") == errors_before + 1
    assert await gateway.config_hash() == old_hash
    assert await statuses(gateway.url + "/a/x", 20) == Counter({200: 20})

    # SIGHUP with the same bad file: refused the same way.
    os.kill(gateway.pid, signal.SIGHUP)

    async def counted_twice() -> bool:
        return reload_count(await gateway.metrics(), "error") == errors_before + 2

    assert await eventually(counted_twice), gateway.log()

    # A valid file that moves the proxy port needs a restart: refused, saying so.
    moved = {**good, "listen": {**good["listen"], "port": good["listen"]["port"] + 1}}
    gateway.write(moved)
    status, body = await gateway.admin_reload()
    assert status == 422, body
    assert body["error"]["code"] == "invalid_config"
    assert "listen.port" in body["error"]["message"]
    assert "restart" in body["error"]["message"]
    assert reload_count(await gateway.metrics(), "error") == errors_before + 3
    assert await gateway.config_hash() == old_hash
    assert await statuses(gateway.url + "/a/x", 20) == Counter({200: 20})


@pytest.mark.slow
async def test_a_config_file_that_is_not_utf8_is_refused_like_any_invalid_file(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    one = await serve_app(echo_app("one"))
    gateway = await launch(redis_clean.url, [route("a", str(one.make_url("")), public=True)])
    old_hash = await gateway.config_hash()
    errors_before = reload_count(await gateway.metrics(), "error")
    # A Latin-1 comment, as an editor on another machine might save it.
    gateway.path.write_bytes(gateway.path.read_bytes() + b"\n# caf\xe9\n")

    status, body = await gateway.admin_reload()
    assert await gateway.config_hash() == old_hash
    assert await statuses(gateway.url + "/a/x", 5) == Counter({200: 5})
    assert status == 422, body
    assert body["error"]["code"] == "invalid_config"
    assert str(gateway.path) in body["error"]["message"]
    assert reload_count(await gateway.metrics(), "error") == errors_before + 1
    assert "config reload refused" in gateway.log()
