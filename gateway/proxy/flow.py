"""Write flow control for the two protocols of the proxy: asyncio's pause_writing and
resume_writing callbacks turned into one awaitable, so a writer waits while the socket's send
buffer is full (the bound on memory for answers and uploads alike)."""

from __future__ import annotations

import asyncio


class WriteFlow:
    __slots__ = ("_waiter", "paused")

    def __init__(self) -> None:
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._settle(None)

    def release(self, error: BaseException | None = None) -> None:
        """The connection is gone: a waiting writer wakes (with `error`, if given)."""
        self._settle(error)

    def _settle(self, error: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def wait(self, within: float | None = None) -> None:
        """Return once writing may go on; TimeoutError after `within` seconds of waiting."""
        if not self.paused:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._waiter, within)
        finally:
            self._waiter = None
