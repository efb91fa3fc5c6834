"""A worker of `gateway run --workers N` ends, whatever stage it is at (issue 17, item 16): a
SIGTERM to the supervisor stops a worker still starting, and a worker whose supervisor is gone
(SIGKILL) exits by itself, starting, serving or stopping.

Workers get stuck where a real one does: on a store that takes connections and answers nothing
(a Redis under CLIENT PAUSE), with a long `redis.timeout`, so a start-up or a shutdown that
waits on the store lasts well past the bounds here. The bounds are on hangs, not timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.conftest import api_key, new_key, service_for
from tests.integration.test_process_model import (
    Gateway,
    descendants,
    echo_app,
    eventually,
    route,
    running,
    short_dir_fixture,  # noqa: F401 (registers the `short_dir` fixture here)
    worker_pids,
)
from tests.support.redis_server import RedisServer

# The store's timeout: a start-up on a store that does not answer waits several of them, a
# shutdown with last-use data to write at least one.
STORE_TIMEOUT = "30s"
EXIT_BOUND = 15.0  # a worker is gone within this long (its drain_timeout is 1 s)


@dataclass
class Stuck:
    """A gateway whose workers the test gets stuck, and every pid it has seen: any of them
    still running at the end is killed (an orphaned worker must not outlive a failed test)."""

    gateway: Gateway
    store: RedisServer
    seen: set[int]


@pytest.fixture(name="stuck")
async def stuck_fixture(own_redis: RedisServer, serve_app: Any,
                        short_dir: Path) -> AsyncIterator[Stuck]:
    upstream = await serve_app(echo_app("one"))
    gateway = Gateway(short_dir, own_redis.tcp_url,
                      [route("svc", str(upstream.make_url("")), scopes=["svc.use"])], 2,
                      redis={"url": own_redis.tcp_url, "timeout": STORE_TIMEOUT},
                      keys={"last_used_flush": "60s"})
    gateway.data["listen"]["drain_timeout"] = "1s"
    gateway.write(gateway.data)
    await gateway.start()
    stuck = Stuck(gateway, own_redis, descendants(gateway.pid))
    yield stuck
    if gateway.process.process is not None:
        await gateway.stop(signal.SIGKILL)
    for pid in stuck.seen:
        if running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pause(store: RedisServer) -> None:
    """Every client's commands wait from now on, those of connections made later too."""
    with contextlib.closing(redis.Redis(host="127.0.0.1", port=store.port)) as client:
        client.execute_command("CLIENT", "PAUSE", 600_000, "ALL")


def connected_to(pid: int, port: int) -> bool:
    """`pid` holds an established TCP connection to 127.0.0.1:`port`."""
    sockets = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    sockets.add(target[len("socket:["):-1])
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in table:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if int(remote.rpartition(":")[2], 16) == port and state == "01" and inode in sockets:
            return True
    return False


async def a_worker_starting(stuck: Stuck) -> tuple[int, int]:
    """Pause the store and kill a worker: the supervisor starts another, which waits on the
    store. Returns the worker serving and the one starting, once it waits on the store."""
    gateway = stuck.gateway
    before = worker_pids(gateway.pid)
    assert len(before) == 2, before
    pause(stuck.store)
    victim, serving = sorted(before)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int]:
        return worker_pids(gateway.pid) - before

    assert await eventually(replaced), gateway.log()
    (starting,) = replaced()
    stuck.seen.add(starting)
    assert await eventually(lambda: connected_to(starting, stuck.store.port)), gateway.log()
    assert f"ready (pid {starting})" not in gateway.log()
    return serving, starting


@pytest.mark.slow
async def test_sigterm_ends_a_worker_still_starting_on_a_store_that_does_not_answer(
        stuck: Stuck) -> None:
    serving, starting = await a_worker_starting(stuck)
    process = stuck.gateway.process.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(process.wait, EXIT_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the supervisor was still there {EXIT_BOUND} s after SIGTERM:\n"
                    f"{stuck.gateway.log()}")
    stuck.gateway.process.process = None
    log = stuck.gateway.log()
    assert code == 0, log
    assert not running(serving) and not running(starting), log
    assert "did not stop in time" not in log
    assert "stopped while starting" in log


@pytest.mark.slow
async def test_workers_starting_and_serving_exit_when_the_supervisor_is_killed(
        stuck: Stuck) -> None:
    serving, starting = await a_worker_starting(stuck)
    await stuck.gateway.stop(signal.SIGKILL)

    def gone() -> bool:
        return not running(serving) and not running(starting)

    assert await eventually(gone, EXIT_BOUND), stuck.gateway.log()
    assert stuck.gateway.log().count("the supervisor is gone; stopping") == 2, \
        stuck.gateway.log()


@pytest.mark.slow
async def test_workers_stopping_on_a_store_that_does_not_answer_exit_without_a_supervisor(
        stuck: Stuck) -> None:
    """The supervisor is killed while its workers stop, one of them with last-use data that
    the paused store does not take (the write waits out the store's timeout): their shutdown
    still ends within the drain timeout and a grace period of their own."""
    gateway = stuck.gateway
    workers = worker_pids(gateway.pid)
    service, client = await service_for(stuck.store.tcp_url)
    try:
        _, secret, _ = await new_key(service, ("svc.use",))
    finally:
        await client.aclose()
    async with aiohttp.ClientSession() as session, \
            session.get(gateway.url + "/svc/x", headers=api_key(secret)) as response:
        assert response.status == 200  # a last use, written at shutdown
    pause(stuck.store)
    process = gateway.process.process
    assert process is not None
    process.send_signal(signal.SIGTERM)

    def stopping() -> bool:
        return gateway.log().count("draining requests in flight") == 2

    assert await eventually(stopping), gateway.log()
    await gateway.stop(signal.SIGKILL)

    assert await eventually(lambda: not any(running(pid) for pid in workers), EXIT_BOUND), \
        gateway.log()
    assert "did not stop within" in gateway.log()  # the one with last-use data
