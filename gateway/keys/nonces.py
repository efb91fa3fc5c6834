"""Replay protection for signed requests: each nonce is claimed once with `SET NX PX`.

Claims share round trips: one script call sets a whole batch, and a worker has at most one
batch out at a time (see ReplayGuard). On one Redis or a Sentinel group's master the batch goes
out on a connection of the guard's own (gateway.store.direct), as a command packed here:
redis-py's per-command machinery cost more CPU than everything else a signed request does, and
every signed request makes a claim. On a Redis Cluster a batch's nonces live in many slots (they
are spread by their own hash, so no master holds more than its share), so the batch goes as one
non-transactional pipeline of `SET NX PX`, which redis-py's cluster client sends per node and
follows through MOVED and ASK.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from functools import partial

import hiredis

from gateway.errors import StoreError, StoreUnavailable
from gateway.store.client import GatedCluster, Redis, store_errors
from gateway.store.direct import DirectConnection, Reply, bulk, pack

NONCE = "gw:nonce:"
MAX_BATCH = 512

# KEYS: the nonce keys; ARGV[1]: their lifetime (ms). Answers 1 per key newly set, 0 per key
# already there.
CLAIM_SCRIPT = b"""
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('SET', key, '1', 'NX', 'PX', ARGV[1]) and 1 or 0
end
return out
"""
CLAIM_SHA = hashlib.sha1(CLAIM_SCRIPT).hexdigest().encode()  # noqa: S324 - Redis's script id


def nonce_key(key_id: str, nonce: str) -> bytes:
    digest = hashlib.sha256(nonce.encode()).hexdigest()[:32]  # bounded key length
    return f"{NONCE}{key_id}:{digest}".encode()


def pack_claims(command: bytes, script: bytes, keys: list[bytes], px: int) -> bytes:
    """`EVALSHA <sha> <n> <keys...> <px>` (or EVAL with the script's text), as RESP. The keys
    come already packed (`bulk`): each claim packs its own key once, when it is made."""
    return b"".join([b"*%d\r\n" % (len(keys) + 4), bulk(command), bulk(script),
                     bulk(b"%d" % len(keys)), *keys, bulk(b"%d" % px)])


Claim = tuple[bytes, int, "asyncio.Future[bool]"]  # nonce key, lifetime (ms), its waiter


def _closing() -> StoreUnavailable:
    return StoreUnavailable("key store unavailable: the gateway is closing")


class ReplayGuard:
    """At most one round trip in flight per worker: claims made while it is out wait for it and
    then go together in the next one. Alone, a claim goes at once; under load the batches grow
    with the rate, and the worker pays one write, one script call and one reply per batch
    rather than per request. When the store fails a batch, the claims queued behind it fail
    with it: they would wait a second timeout for the same answer. Waiters are told
    StoreUnavailable, whatever went wrong: a nonce that cannot be checked is never accepted.

    A batch's nonces are all kept for the longest lifetime among them: never shorter than any
    one needs (replays stay refused), at most `hmac.clock_skew` longer for a signature that
    expires early."""

    def __init__(self, redis: Redis, *, confirm_replicas: int = 0,
                 confirm_timeout: float = 0.5) -> None:
        # With confirm_replicas, each batch is followed (in the same write) by WAIT: a claim
        # counts only once that many replicas hold it. A master cut off from its replicas (a
        # Sentinel failover under way: the old master takes writes for seconds after the new
        # one is promoted, and loses them) cannot confirm, and the batch fails (503), rather
        # than accept a nonce the store will forget, which would let the request be replayed.
        self._wait_ms = max(int(confirm_timeout * 1000), 1)
        self._confirm = 0
        self._wait = b""
        self.confirm(confirm_replicas)
        self._cluster = redis if isinstance(redis, GatedCluster) else None
        self._connection = DirectConnection(redis) if not isinstance(redis, GatedCluster) \
            else None
        self._pending: list[Claim] = []
        self._in_flight = False
        self._opening: asyncio.Task[None] | None = None
        self._closed = False

    def claim(self, key_id: str, nonce: str, ttl: float) -> asyncio.Future[bool]:
        """Resolves True when the nonce was unused (and is now taken for `ttl` seconds). A
        future rather than a coroutine: one frame fewer on every signed request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if self._closed:
            future.set_exception(_closing())
            return future
        self._pending.append((nonce_key(key_id, nonce), max(int(ttl * 1000), 1), future))
        if len(self._pending) == 1 and not self._in_flight:
            loop.call_soon(self._send)  # the others made in this loop turn join it
        return future

    def confirm(self, replicas: int) -> None:
        """Confirm each batch on this many replicas from now on (0: not at all)."""
        self._confirm = replicas
        self._wait = pack(b"WAIT", b"%d" % replicas, b"%d" % self._wait_ms)

    def reopen(self) -> None:
        """Drop the connection (the store's master changed): the next batch opens a new one,
        to the master named then. A batch out on the old one fails (503), never succeeds on a
        master whose writes are about to be lost."""
        if self._connection is not None and not self._closed:
            self._connection.close()

    def close(self) -> None:
        """Close the connection for good; claims still out or queued fail with
        StoreUnavailable, and so does any claim made later."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()  # its done-callback fails the batch it held
        if self._connection is not None:
            self._connection.close()  # fails the batch that is out, if any
        self._failed([], _closing())  # and what is queued

    def _send(self) -> None:
        if not self._pending or self._in_flight or self._closed:
            return
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._in_flight = True
        if self._cluster is not None:
            task = asyncio.get_running_loop().create_task(self._claim_on_cluster(batch))
            task.add_done_callback(partial(self._cluster_done, batch))
            return
        assert self._connection is not None
        if self._connection.is_open:
            self._write(batch, b"EVALSHA", CLAIM_SHA)
            return
        # The first batch, or the first since the store failed. Whatever ends the opening
        # (even a cancel before it ever ran) answers the batch and clears `_in_flight`.
        task = self._opening = asyncio.get_running_loop().create_task(self._connection.open())
        task.add_done_callback(partial(self._opened, batch))

    def _opened(self, batch: list[Claim], task: asyncio.Task[None]) -> None:
        self._opening = None
        if task.cancelled() or self._closed:
            self._failed(batch, _closing())
        elif (exc := task.exception()) is not None:
            self._failed(batch, exc)  # any error at all: the claims must not wait forever
        else:
            self._write(batch, b"EVALSHA", CLAIM_SHA)

    async def _claim_on_cluster(self, batch: list[Claim]) -> None:
        assert self._cluster is not None
        # Each batch writes a token of its own (SET NX GET answers what was there): a claim
        # that redis-py's cluster pipeline sends again after a redirection or a lost
        # connection, and that had landed the first time, finds its own token and is still
        # the first use, not a replay.
        token = os.urandom(8).hex().encode()
        with store_errors():
            async with self._cluster.pipeline(transaction=False) as pipe:
                for key, px, _ in batch:
                    pipe.set(key, token, nx=True, px=px, get=True)
                replies = await pipe.execute()
        for (_, _, future), before in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(before is None or before == token)

    def _cluster_done(self, batch: list[Claim], task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            self._failed(batch, _closing())
        elif (exc := task.exception()) is not None:
            self._failed(batch, exc)
        else:
            self._in_flight = False
            self._send()

    def _write(self, batch: list[Claim], command: bytes, script: bytes) -> None:
        assert self._connection is not None
        packed = pack_claims(command, script, [bulk(key) for key, _, _ in batch],
                             max(px for _, px, _ in batch))
        if not self._confirm:
            self._connection.send(packed, partial(self._answered, batch, command),
                                  partial(self._failed, batch))
            return
        replies: list[Reply] = []
        self._connection.send(packed, replies.append, partial(self._failed, batch))
        self._connection.send(self._wait,
                              lambda acked: self._answered(batch, command, replies[0], acked),
                              partial(self._failed, batch))

    def _answered(self, batch: list[Claim], command: bytes, reply: Reply,
                  acked: Reply = None) -> None:
        if isinstance(reply, hiredis.ReplyError):
            if command == b"EVALSHA" and str(reply).startswith("NOSCRIPT"):
                # A fresh or flushed Redis: EVAL runs the script and caches it again.
                self._write(batch, b"EVAL", CLAIM_SCRIPT)
                return
            if str(reply).startswith(("READONLY", "MASTERDOWN", "LOADING")):
                # A master demoted by a failover (or one not ready): reopen, which asks the
                # sentinels afresh, rather than keep writing to a replica for good.
                assert self._connection is not None
                self._connection.close()
                self._failed(batch, StoreUnavailable(f"key store unavailable: {reply}"))
                return
            self._failed(batch, StoreError(f"key store error: {reply}"))
            return
        if not isinstance(reply, list) or len(reply) != len(batch):
            self._failed(batch, StoreError(f"key store error: unexpected reply {reply!r:.80}"))
            return
        if self._confirm and not (isinstance(acked, int) and acked >= self._confirm):
            assert self._connection is not None
            self._connection.close()  # the next batch asks for the master afresh
            self._failed(batch, StoreUnavailable(
                f"key store unavailable: the nonce is not confirmed on {self._confirm} "
                f"replica(s) ({acked!r:.40}); a failover may be under way"))
            return
        for (_, _, future), stored in zip(batch, reply, strict=True):
            if not future.done():  # a waiter whose client left is already cancelled
                future.set_result(stored == 1)
        self._in_flight = False
        self._send()  # what queued up meanwhile

    def _failed(self, batch: list[Claim], error: BaseException) -> None:
        failure = error if isinstance(error, StoreUnavailable) \
            else StoreUnavailable(f"nonce check failed: {error}")
        queued, self._pending = self._pending, []
        for _, _, future in (*batch, *queued):
            if not future.done():
                future.set_exception(failure)
        self._in_flight = False
