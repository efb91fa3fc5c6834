"""`last_used_at` (SPEC §7): recorded for every successful authentication, written in batches.

A request only updates a dict in memory; a background task merges the batch into Redis every
`keys.last_used_flush` (see KeyStore.write_last_used: bounded script calls, forward-only, never
for a deleted key). A large batch (a backlog after an outage) goes out in bounded round trips,
one at a time, so a worker neither floods Redis nor runs into its timeout. What a failed or
interrupted flush did not get confirmed stays for the next one; what Redis confirmed is not
sent again. The last batch is flushed on graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import StoreError
from gateway.keys.store import KeyStore
from gateway.tasks import Periodic

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, store: KeyStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._pending: dict[str, float] = {}
        self._loop = Periodic("last-used flush", lambda: self.interval, self.flush,
                              self._flush_failed)
        self._flushing = asyncio.Lock()  # one flush at a time: the loop's and close()'s

    def record(self, key_id: str, when: float | None = None) -> None:
        when = time.time() if when is None else when
        if when > self._pending.get(key_id, 0.0):
            self._pending[key_id] = when

    @property
    def pending(self) -> int:
        """Keys whose last use is waiting to be written."""
        return len(self._pending)

    async def flush(self) -> None:
        async with self._flushing:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            try:
                async for flushed in self.store.write_last_used(batch):
                    for key_id in flushed.confirmed:
                        del batch[key_id]
            finally:
                # Unconfirmed entries (a failure, a timeout, a cancelled flush) go back under
                # anything recorded meanwhile: the later time wins, as in Redis.
                for key_id, when in batch.items():
                    self.record(key_id, when)

    def _flush_failed(self, exc: Exception) -> None:
        # Any error (a store error, or one from the client's internals mid-resharding) keeps
        # the flushes going: the entries are kept for the next one.
        log.warning("last-used flush failed, will retry (%d keys waiting): %s",
                    len(self._pending), exc, exc_info=not isinstance(exc, StoreError))

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        """Stop the background flushes and write what is left."""
        await self._loop.stop()
        try:
            await self.flush()
        except StoreError as exc:
            log.error("last-used data of %d keys could not be written at shutdown: %s",
                      len(self._pending), exc)
