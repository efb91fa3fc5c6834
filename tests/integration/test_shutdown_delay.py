"""SIGTERM's first phase (issue 19): with `shutdown.delay`, the gateway keeps serving new
connections for that long while /readyz answers 503, then closes and drains as before. The real
`gateway run` command, in one process and with workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway.keys.service import KeyService
from tests.conftest import api_key, new_key
from tests.integration.test_process_model import (
    echo_app,
    fresh_session,
    launch_fixture,  # noqa: F401 (registers the `launch` fixture here)
    route,
    short_dir_fixture,  # noqa: F401 (registers the `short_dir` fixture here)
    worker_pids,
)
from tests.support.redis_server import RedisServer, free_port

DELAY = 2.0


async def status_of(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(("workers", "to_group"), [(1, False), (2, False), (2, True)],
                         ids=["one-process", "workers", "workers-signalled-as-a-group"])
async def test_sigterm_keeps_serving_for_the_delay_with_readyz_at_503(
        redis_clean: RedisServer, key_service: KeyService, serve_app: Any, launch: Any,
        workers: int, to_group: bool) -> None:
    """`to_group`: the workers get SIGTERM too, at the same moment, as from systemd's default
    KillMode=control-group; each still waits out the delay once."""
    upstream = await serve_app(echo_app("one"))
    _, secret, _ = await new_key(key_service, ("svc.use",))
    status_port = free_port()
    gateway = await launch(redis_clean.url,
                           [route("one", str(upstream.make_url("")), scopes=["svc.use"])],
                           workers=workers, shutdown={"delay": f"{DELAY}s"},
                           status={"host": "127.0.0.1", "port": status_port})
    status_url = f"http://127.0.0.1:{status_port}"
    async with fresh_session() as session:
        assert (await status_of(session, status_url + "/readyz"))[0] == 200

        targets = [gateway.pid, *(worker_pids(gateway.pid) if to_group else ())]
        assert len(targets) == (3 if to_group else 1)
        for pid in targets:
            os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        proxied: Counter[int] = Counter()
        ready: Counter[int] = Counter()
        reasons: set[str] = set()
        # New connections during most of the delay: every one answered, /readyz 503 on both
        # listeners (the reason on the admin one only).
        while time.monotonic() - signalled < DELAY * 0.75:
            async with session.get(gateway.url + "/one/x", headers=api_key(secret)) as response:
                await response.read()
                proxied[response.status] += 1
            status, _ = await status_of(session, status_url + "/readyz")
            ready[status] += 1
            status, body = await status_of(session, gateway.admin_url + "/readyz")
            ready[status] += 1
            reasons.add(body.get("reason", ""))
            await asyncio.sleep(0.05)
        assert set(proxied) == {200} and proxied[200] >= 5, proxied
        # The first probe may have raced the signal's delivery.
        assert ready[503] >= sum(ready.values()) - 2 and ready[503] >= 4, ready
        assert "shutting down" in reasons

    # Then the listener closes and the process exits, not before the delay.
    code = await asyncio.to_thread(gateway.process.process.wait, DELAY + 15)
    elapsed = time.monotonic() - signalled
    assert code == 0, gateway.log()
    assert DELAY * 0.9 <= elapsed < DELAY + 10, elapsed
    assert "shutdown.delay" in gateway.log()


async def test_without_a_delay_sigterm_stops_at_once(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    upstream = await serve_app(echo_app("one"))
    gateway = await launch(redis_clean.url, [route("one", str(upstream.make_url("")))],
                           workers=2)
    started = time.monotonic()
    assert await gateway.stop() == 0
    assert time.monotonic() - started < DELAY
    assert "shutdown.delay" not in gateway.log()
