"""Replay protection for signed requests: each nonce is claimed once with `SET NX PX`.

Claims share round trips: one script call sets a whole batch, and a worker has at most one
batch out at a time (see ReplayGuard). One command for many nonces costs the worker (and Redis)
a fraction of one each, where a pipeline of SETs would still cost the client a command object
and a reply to parse per nonce. Alone, a claim is a plain SET and still goes out at once.
"""

from __future__ import annotations

import asyncio
import hashlib

from gateway.errors import StoreUnavailable
from gateway.store.client import Redis, store_errors

NONCE = "gw:nonce:"
MAX_BATCH = 512

# KEYS: the nonce keys; ARGV: their lifetimes (ms). Answers 1 per key newly set, 0 per key
# already there.
_CLAIM_ALL = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('SET', key, '1', 'NX', 'PX', ARGV[i]) and 1 or 0
end
return out
"""


def nonce_key(key_id: str, nonce: str) -> bytes:
    # Bytes, as sent: redis-py then packs each key without encoding it again.
    digest = hashlib.sha256(nonce.encode()).hexdigest()[:32]  # bounded key length
    return f"{NONCE}{key_id}:{digest}".encode()


class ReplayGuard:
    """At most one round trip in flight per worker: claims made while it is out wait for it and
    then go together in the next one. Alone, a claim goes at once; under load the batches grow
    with the rate, and the worker pays one write, one script call and one reply per batch
    rather than per request (the send, not Redis, was the cost). When the store fails a batch,
    the claims queued behind it fail with it: they would wait a second timeout for the same
    answer."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim_all = redis.register_script(_CLAIM_ALL)
        self._pending: list[tuple[bytes, int, asyncio.Future[bool]]] = []
        self._in_flight: asyncio.Task[None] | None = None

    async def claim(self, key_id: str, nonce: str, ttl: float) -> bool:
        """True when the nonce was unused (and is now taken for `ttl` seconds)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((nonce_key(key_id, nonce), max(int(ttl * 1000), 1), future))
        if len(self._pending) == 1 and self._in_flight is None:
            loop.call_soon(self._send)  # the others made in this loop turn join it
        return await future

    def _send(self) -> None:
        if not self._pending or self._in_flight is not None:
            return
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        task = self._in_flight = asyncio.get_running_loop().create_task(self._claim(batch))
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight = None
        self._send()  # what queued up meanwhile

    async def _claim(self, batch: list[tuple[bytes, int, asyncio.Future[bool]]]) -> None:
        try:
            with store_errors():
                if len(batch) == 1:
                    name, px, _ = batch[0]
                    results = [await self.redis.set(name, b"1", nx=True, px=px)]
                else:
                    results = await self._claim_all(keys=[name for name, _, _ in batch],
                                                    args=[px for _, px, _ in batch])
        except Exception as exc:  # every waiter gets the store's failure, typed
            failure = exc if isinstance(exc, StoreUnavailable) \
                else StoreUnavailable(f"nonce check failed: {exc}")
            queued, self._pending = self._pending, []
            for _, _, future in (*batch, *queued):
                if not future.done():
                    future.set_exception(failure)
            return
        for (_, _, future), stored in zip(batch, results, strict=True):
            if not future.done():  # a waiter whose client left is already cancelled
                future.set_result(bool(stored))
