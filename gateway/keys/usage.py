"""`last_used_at` (SPEC §7): recorded for every successful authentication, written in batches.

A request only updates a dict in memory; a background task merges the batch into Redis every
`keys.last_used_flush` with one forward-only script call. A failed flush keeps its batch for the
next one, and the last batch is flushed on graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import StoreError
from gateway.keys.store import KeyStore
from gateway.tasks import stop_task

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, store: KeyStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, key_id: str, when: float | None = None) -> None:
        when = time.time() if when is None else when
        if when > self._pending.get(key_id, 0.0):
            self._pending[key_id] = when

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self.store.record_last_used(batch)
        except StoreError:
            # Keep the batch: merge it back under anything recorded meanwhile.
            for key_id, when in batch.items():
                self.record(key_id, when)
            raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except StoreError as exc:
                log.warning("last-used flush failed, will retry: %s", exc)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop the background flushes and write what is left."""
        await stop_task(self._task)
        self._task = None
        try:
            await self.flush()
        except StoreError as exc:
            log.error("last-used data of %d keys could not be written at shutdown: %s",
                      len(self._pending), exc)
