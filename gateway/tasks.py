"""Background tasks of a gateway process (flushes, sweeps, the store watch): one way to run a
step periodically and one way to stop a task, used everywhere.

The cancellation rule: a stop ends the task whatever it is doing, and the worker's shutdown never
waits on a task that carries on. A cancellation can be lost on the way: on Python 3.11,
`asyncio.wait_for` returns its result instead of raising when the cancellation lands in the loop
turn its awaitable completes (redis-py wraps every command it sends in one; a background loop
that waited on an event with it lost its stop whenever the event was set in that turn), and a
loop that then catches the error of its next store call goes round again for ever. So
`stop_task` cancels again until the task has ended, and `Periodic` also checks a flag at every
turn. Nothing here swallows a cancellation of its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RECANCEL = 0.5  # how often a task that carries on after a cancellation is cancelled again


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended (its `finally` blocks included), cancelling it
    again every RECANCEL seconds while it goes on. An error it ended with is logged, not
    raised. If the caller is cancelled meanwhile, that cancellation propagates (the task has
    been cancelled all the same)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended with an error", task.get_name(), exc_info=task.exception())


class Periodic:
    """Runs `step` every `interval` seconds (read at each turn, so a reload can change it) until
    stopped, or sooner when woken. A step's exception never ends the loop: `on_error` is told
    of it (by default it is logged with its traceback). A stop always ends it (see the module's
    docstring), between steps or inside one."""

    def __init__(self, name: str, interval: Callable[[], float],
                 step: Callable[[], Awaitable[None]],
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.name = name
        self.interval = interval
        self.step = step
        self.on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Run the step now rather than at the end of the interval (if one is running, run
        another as soon as it ends)."""
        self._wake.set()

    async def stop(self) -> None:
        """End the loop and wait until it has ended (a step under way is cancelled)."""
        self._stopping = True
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while not self._stopping:
            await self._pause()
            if self._stopping:
                break
            self._wake.clear()
            try:
                await self.step()
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(exc)
                else:
                    log.exception("%s failed; trying again in %.1f s", self.name,
                                  self.interval())

    async def _pause(self) -> None:
        # Not wait_for (see the module's docstring): asyncio.timeout lets a cancellation through
        # even when the event is set, or the time is up, in the same turn.
        if self._wake.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval()):
                await self._wake.wait()
