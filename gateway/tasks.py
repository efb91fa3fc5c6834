"""Background tasks of a gateway process (flushes, sweeps, the store watch): one way to run a
step periodically and one way to stop a task, used everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended (its `finally` blocks included)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Periodic:
    """Runs `step` every `interval` seconds (read at each turn, so a reload can change it) until
    stopped. A step's exception never ends the loop: `on_error` is told of it (by default it is
    logged with its traceback). A cancellation always ends it: it is never swallowed, so a
    worker's shutdown cannot hang on a loop that caught it."""

    def __init__(self, name: str, interval: Callable[[], float],
                 step: Callable[[], Awaitable[None]],
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.name = name
        self.interval = interval
        self.step = step
        self.on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended. redis-py can swallow a cancellation
        that lands inside a read and carry on: so the loop also checks a flag at every turn,
        and the cancellation is repeated until the task is done."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s ended with an error", self.name, exc_info=task.exception())

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval())
            try:
                await self.step()
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(exc)
                else:
                    log.exception("%s failed; trying again in %.1f s", self.name,
                                  self.interval())
