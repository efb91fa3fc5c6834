"""The per-worker key cache (SPEC §7).

- A warm request costs no Redis round trip: records are served from memory while fresh.
- Freshness ends after `keys.cache_ttl`, on an invalidation message for the key or its account,
  and for everything at once whenever the invalidation subscription was lost or re-established
  (messages may have been missed), so no revocation is ever served from memory.
- Unknown secrets are cached negatively for `keys.negative_cache_ttl`, in a bounded table.
- Concurrent misses for the same record share one store lookup.
- While the store is unreachable, records already cached keep serving for
  `keys.stale_if_error` from the first failure; anything else raises StoreUnavailable. The store
  is then probed at most every PROBE_INTERVAL rather than by every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from gateway.config import KeysConfig
from gateway.errors import StoreUnavailable
from gateway.keys.model import Account, KeyRecord
from gateway.keys.store import EVENTS, KeyStore
from gateway.observability.metrics import KEY_CACHE, STORE_ERRORS
from gateway.observability.tally import TALLY
from gateway.store.client import Redis, subscriber
from gateway.tasks import stop_task

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ENTRIES = 100_000
MAX_NEGATIVE = 10_000
PROBE_INTERVAL = 0.5
_NEVER = float("-inf")


@dataclass(slots=True)
class _Entry(Generic[T]):
    value: T
    fresh_until: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    negative_hits: int
    stale_serves: int


def _id_token(key_id: str) -> str:
    """The lookup token of an HMAC key (an API key's is its secret hash)."""
    return "id:" + key_id


class KeyCache:
    def __init__(self, store: KeyStore, config: KeysConfig,
                 clock: Callable[[], float] = time.monotonic, *,
                 max_entries: int = MAX_ENTRIES, max_negative: int = MAX_NEGATIVE) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.max_entries = max_entries
        self.max_negative = max_negative
        # Keys by lookup token (an API-key secret hash, or "id:" + key id for HMAC keys).
        self._keys: OrderedDict[str, _Entry[KeyRecord]] = OrderedDict()
        self._tokens_of_key: dict[str, set[str]] = {}  # key id -> its tokens cached
        self._accounts: OrderedDict[str, _Entry[Account | None]] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()  # token -> until
        self._inflight: dict[str, asyncio.Task[object]] = {}
        self._changes = 0  # bumped by every invalidation; loads that straddle one are not kept
        self._down_since: float | None = None
        self._probe_at = _NEVER
        self.hits = self.misses = self.negative_hits = self.stale_serves = 0

    # -- lookups -------------------------------------------------------------------------------

    # The hot path asks these first: a key and account both cached and fresh come back without
    # an await (three coroutines fewer on nearly every request); None means: await the lookup.

    def api_key_now(self, secret_hash: str) -> tuple[KeyRecord, Account | None] | None:
        return self._fresh(secret_hash)

    def key_by_id_now(self, key_id: str) -> tuple[KeyRecord, Account | None] | None:
        return self._fresh(_id_token(key_id))

    def _fresh(self, token: str) -> tuple[KeyRecord, Account | None] | None:
        entry = self._keys.get(token)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.fresh_until:
            return None
        key = entry.value
        account = self._accounts.get(key.account_id)
        if account is None or now >= account.fresh_until:
            return None
        self.hits += 1
        TALLY.counter(KEY_CACHE, "hit").inc()
        return key, account.value

    async def api_key(self, secret_hash: str) -> tuple[KeyRecord | None, Account | None]:
        """The key holding this API-key secret and its account; (None, None) when unknown."""
        return await self._lookup(secret_hash, lambda: self._fetch_key(secret_hash))

    async def key_by_id(self, key_id: str) -> tuple[KeyRecord | None, Account | None]:
        """The key with this id (an HMAC key's token) and its account."""
        return await self._lookup(_id_token(key_id), lambda: self.store.get_key(key_id))

    async def _lookup(self, token: str, fetch: Callable[[], Awaitable[KeyRecord | None]]
                      ) -> tuple[KeyRecord | None, Account | None]:
        # `token` is how this key was asked for: an API-key secret hash, or "id:" + key id.
        now = self.clock()
        entry = self._keys.get(token)
        if entry is not None and now < entry.fresh_until:
            self.hits += 1
            TALLY.counter(KEY_CACHE, "hit").inc()
            key: KeyRecord | None = entry.value
        else:
            until = self._negative.get(token)
            if entry is None and until is not None and now < until:
                self.negative_hits += 1
                TALLY.counter(KEY_CACHE, "negative_hit").inc()
                return None, None
            self.misses += 1
            TALLY.counter(KEY_CACHE, "miss").inc()
            try:
                key, cacheable = await self._load("s:" + token, fetch)
            except StoreUnavailable:
                if entry is None or not self._may_serve_stale(now):
                    raise
                self.stale_serves += 1
                TALLY.counter(KEY_CACHE, "stale").inc()
                key = entry.value
            else:
                if cacheable:
                    self._remember_key(token, key)
        if key is None:
            return None, None
        return key, await self._account(key.account_id)

    async def _account(self, account_id: str) -> Account | None:
        now = self.clock()
        entry = self._accounts.get(account_id)
        if entry is not None and now < entry.fresh_until:
            return entry.value
        try:
            account, cacheable = await self._load("a:" + account_id,
                                                  lambda: self.store.get_account(account_id))
        except StoreUnavailable:
            if entry is None or not self._may_serve_stale(now):
                raise
            self.stale_serves += 1
            TALLY.counter(KEY_CACHE, "stale").inc()
            return entry.value
        if cacheable:
            self._accounts[account_id] = _Entry(account, self.clock() + self.config.cache_ttl)
            self._accounts.move_to_end(account_id)
            self._bound(self._accounts, self.max_entries)
        return account

    async def _fetch_key(self, secret_hash: str) -> KeyRecord | None:
        key_id = await self.store.key_id_for_secret(secret_hash)
        return await self.store.get_key(key_id) if key_id is not None else None

    async def _load(self, token: str, fetch: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """One store lookup per token at a time; callers share it. Gated while the store is
        known to be down, so an outage costs one probe per interval, not one per request.
        Returns the value and whether it may be cached (no invalidation arrived meanwhile)."""
        task = self._inflight.get(token)
        if task is None:
            if self._down_since is not None and self.clock() < self._probe_at:
                raise StoreUnavailable("key store unavailable (waiting to probe again)")
            task = asyncio.ensure_future(self._guarded(fetch, self._changes))
            self._inflight[token] = task
            task.add_done_callback(lambda _: self._inflight.pop(token, None))
        # Shielded: a client that goes away must not cancel the lookup others are waiting on.
        result = await asyncio.shield(task)
        return result  # type: ignore[return-value]

    async def _guarded(self, fetch: Callable[[], Awaitable[T]],
                       changes_before: int) -> tuple[T, bool]:
        try:
            value = await fetch()
        except StoreUnavailable:
            STORE_ERRORS.inc()
            now = self.clock()
            if self._down_since is None:
                self._down_since = now
                log.warning("key store unavailable; serving cached keys for up to %.0fs",
                            self.config.stale_if_error)
            self._probe_at = now + PROBE_INTERVAL
            raise
        if self._down_since is not None:
            log.info("key store reachable again")
        self._down_since = None
        # An invalidation that arrived while we were reading may postdate what we read.
        return value, self._changes == changes_before

    def _may_serve_stale(self, now: float) -> bool:
        return self._down_since is not None and now - self._down_since < self.config.stale_if_error

    def _remember_key(self, token: str, key: KeyRecord | None) -> None:
        if key is None:
            self._negative[token] = self.clock() + self.config.negative_cache_ttl
            self._negative.move_to_end(token)
            self._bound(self._negative, self.max_negative)
            self._forget_token(token)
            return
        self._negative.pop(token, None)
        self._keys[token] = _Entry(key, self.clock() + self.config.cache_ttl)
        self._keys.move_to_end(token)
        self._tokens_of_key.setdefault(key.id, set()).add(token)
        while len(self._keys) > self.max_entries:
            evicted_token, evicted = self._keys.popitem(last=False)
            self._unindex(evicted.value.id, evicted_token)

    def _forget_token(self, token: str) -> None:
        entry = self._keys.pop(token, None)
        if entry is not None:
            self._unindex(entry.value.id, token)

    def _unindex(self, key_id: str, token: str) -> None:
        hashes = self._tokens_of_key.get(key_id)
        if hashes is not None:
            hashes.discard(token)
            if not hashes:
                del self._tokens_of_key[key_id]

    @staticmethod
    def _bound(table: OrderedDict[str, T], limit: int) -> None:
        while len(table) > limit:
            table.popitem(last=False)

    # -- invalidation --------------------------------------------------------------------------

    def invalidate_key(self, key_id: str) -> None:
        """The key changed: forget it outright. Not even a store outage may bring back a
        record we know to be out of date (a deleted key must never be served stale)."""
        self._changes += 1
        for token in list(self._tokens_of_key.get(key_id, ())):
            self._forget_token(token)

    def invalidate_account(self, account_id: str) -> None:
        self._changes += 1
        self._accounts.pop(account_id, None)

    def drop_all(self) -> None:
        """Invalidation messages may have been missed: trust nothing cached without a re-read.
        Records stay only as a fallback for a store that cannot be reached (stale-if-error)."""
        self._changes += 1
        for key_entry in self._keys.values():
            key_entry.fresh_until = _NEVER
        for account_entry in self._accounts.values():
            account_entry.fresh_until = _NEVER
        self._negative.clear()

    def handle_event(self, payload: bytes) -> None:
        try:
            event = orjson.loads(payload)
            kind, ident = event["kind"], event["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring malformed invalidation message")
            return
        if kind == "key":
            self.invalidate_key(ident)
        elif kind == "account":
            self.invalidate_account(ident)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Cached keys, cached accounts, negative entries."""
        return len(self._keys), len(self._accounts), len(self._negative)

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.negative_hits, self.stale_serves)


class InvalidationListener:
    """Follows the invalidation channel; any gap in the subscription drops the cache.

    Other channels ride on the same subscription connection: `handlers` maps each channel
    name to a callback taking a message's payload (the brute-force block announcements of
    gateway.auth.throttle). A callback must not raise: a failure here counts as a gap."""

    RETRY_MIN = 0.05
    RETRY_MAX = 1.0
    # How long one wait for a message lasts; also the longest a stop() waits for the loop.
    POLL = 0.25

    def __init__(self, redis: Redis, cache: KeyCache,
                 handlers: Mapping[str, Callable[[bytes], None]] | None = None) -> None:
        self.redis = redis
        self.cache = cache
        self.subscribed = asyncio.Event()
        self._stopping = False
        self._moving = False
        self._task: asyncio.Task[None] | None = None
        # Channel (as redis-py reports it: bytes) -> callback.
        self._handlers: dict[bytes, Callable[[bytes], None]] = {
            channel.encode(): handler for channel, handler in (handlers or {}).items()}
        self._handlers[EVENTS.encode()] = cache.handle_event

    def _on_connect(self, connection: object) -> None:
        # Called by redis-py on every (re)connect of the subscription, including the silent
        # reconnects it performs by itself: whatever was published meanwhile is unknown.
        self.cache.drop_all()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def resubscribe(self) -> None:
        """Subscribe again, on the store's current master (a Sentinel failover: what is
        published on the new master never reaches a subscriber of the old). Within one POLL;
        the cache is dropped as for any gap."""
        self._moving = True

    async def stop(self) -> None:
        # A cancellation can be lost inside a redis-py call (see gateway.tasks): stop_task
        # cancels again until the loop ends, and the loop checks this flag after every bounded
        # wait.
        self._stopping = True
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        delay = self.RETRY_MIN
        attempt = 0
        while not self._stopping:
            client, owned = subscriber(self.redis, attempt)
            attempt += 1
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*self._handlers)
                assert pubsub.connection is not None
                pubsub.connection.register_connect_callback(self._on_connect)
                self.cache.drop_all()
                self.subscribed.set()
                delay = self.RETRY_MIN
                while not self._stopping:
                    if self._moving:
                        self._moving = False
                        raise ConnectionError("the store has a new master")
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=self.POLL)
                    if message is not None and message.get("type") == "message":
                        channel = message["channel"]
                        if isinstance(channel, str):  # a client made with decode_responses
                            channel = channel.encode()
                        handler = self._handlers.get(channel)
                        if handler is not None:
                            handler(message["data"])
            except Exception as exc:  # any failure means the subscription has a gap
                if self.subscribed.is_set():
                    log.warning("invalidation subscription lost (%s); cache dropped",
                                exc.__class__.__name__)
                self.subscribed.clear()
                self.cache.drop_all()
            finally:
                await _close_quietly(pubsub)
                if owned:
                    await _close_quietly(client)
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX)
        self.subscribed.clear()


async def _close_quietly(pubsub: object) -> None:
    # Closing a broken connection may fail too; there is nothing left to do about it.
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[attr-defined]
