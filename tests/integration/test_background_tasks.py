"""gateway.tasks (issue 17, item 16): a background task's stop ends it whatever it was doing, on a
real socket to a server that never answers; a stop never swallows its caller's cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from gateway.tasks import Periodic, stop_task

BOUND = 10.0  # a bound on a hang, not a timing


@pytest.fixture
async def silent_store() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to a server that accepts, reads and never answers (a hung store)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.sockets[0].getsockname()[1])
    yield reader, writer
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def test_a_stop_ends_a_step_that_lost_the_cancellation_and_waits_on_a_silent_store(
        silent_store: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    reader, writer = silent_store
    sent = asyncio.Event()
    inside = asyncio.Event()

    async def step() -> None:
        inside.set()
        # As redis-py sends a command: Python 3.11's wait_for returns the result of an
        # awaitable that completes in the turn the cancellation comes, and drops the latter.
        await asyncio.wait_for(sent.wait(), 30)
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await reader.read(1)  # the answer that never comes

    periodic = Periodic("test flush", lambda: 0.01, step)
    periodic.start()
    await asyncio.wait_for(inside.wait(), BOUND)
    await asyncio.sleep(0.01)  # into the wait
    sent.set()
    stopping = asyncio.ensure_future(periodic.stop())
    await asyncio.wait({stopping}, timeout=BOUND)
    assert stopping.done(), "the stop waited on the silent store for ever"


async def test_a_stop_lets_its_callers_cancellation_through() -> None:
    """A caller giving up on a stop (a timeout around it, its own task cancelled) is not
    kept waiting on a task that will not end."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0.01)  # under way

    async def give_up_after_a_second() -> None:
        async with asyncio.timeout(1.0):
            await stop_task(task)

    giving_up = asyncio.ensure_future(give_up_after_a_second())
    await asyncio.wait({giving_up}, timeout=BOUND)
    release.set()
    await asyncio.wait({task}, timeout=BOUND)
    assert giving_up.done(), "the stop kept its caller waiting on the task"
    with pytest.raises(TimeoutError):
        giving_up.result()
    assert task.done()


async def test_a_woken_loop_steps_at_once_and_a_failing_step_does_not_end_it() -> None:
    steps: list[int] = []
    errors: list[Exception] = []
    stepped = asyncio.Event()

    async def step() -> None:
        steps.append(len(steps))
        stepped.set()
        if len(steps) == 1:
            raise RuntimeError("the first step fails")

    periodic = Periodic("test", lambda: 3600.0, step, errors.append)
    periodic.start()
    try:
        for expected in (1, 2):
            stepped.clear()
            periodic.wake()
            await asyncio.wait_for(stepped.wait(), BOUND)
            assert len(steps) == expected
    finally:
        await periodic.stop()
    assert [str(error) for error in errors] == ["the first step fails"]
