"""Brute-force protection: failed authentications counted per client address, shared by every
worker of every instance; past `brute_force.max_failures` within `brute_force.window` the
address gets 429 with Retry-After for `brute_force.block_for`, before any store lookup.

What it costs a request:

- `retry_after()` (every request, before the credential is even parsed): one dict lookup while
  nothing is blocked in this worker, plus a clock read for a blocked address.
- `record_failure()` (a counted failure): a few dict operations; never any I/O.

Windows are fixed and aligned on the wall clock (window n covers [n * window, (n + 1) *
window)), so every worker and instance counts an address in the same window without asking.

Sharing: every FLUSH_INTERVAL a background task sends the counts of the addresses that failed
since the last flush, in one script call per FLUSH_CHUNK addresses (so one round trip for a
normal flush, however many failures it carries). The script adds them to each address's
counter for the window and answers the shared totals. A total at the limit blocks the address
in Redis and announces the block on the BLOCKS channel, which every worker's
InvalidationListener follows, so each one refuses the address before its next store lookup.
Meanwhile a worker does not wait for a flush to block: its own estimate (the last shared total
it saw plus its failures since) blocks at once.

A burst spread over the workers (issue 17, item 3): with N workers (N > 1), a worker admits an
address's failures under a lease taken from the shared count. Redis keeps, beside each address's
failures, the failures leased out and not yet used; a worker asks for a lease (at a flush) once it
has none, and gets ceil(available / N) where available = max_failures - failures - leased. When its
lease is used up (or at an address's first failure on it, admitted with no lease), the worker holds
the address (its requests wait for the answer, at most HOLD_FOR) and wakes the flush at once rather
than at the next FLUSH_INTERVAL; the answer brings a lease, or the block. Failures used under a
lease are sent as usual and leave the leased count; a lease unused by an address that stayed quiet
for a flush interval is given back, so the budget follows the attacker from worker to worker; and
when what is left is all leased out, the script announces it (a `reclaim` message on the same
channel) and the workers holding leases of the address give them back at once, while the asking
worker asks again every REPOLL. So a burst admits about max_failures failures (measured: 30 of 30
with two workers), not max_failures per worker: beyond it, at most one failure per worker (the one
that first meets the address on it, admitted with no lease). Instances sharing the store lease from
the same count (an instance of one worker takes no leases: it counts on its own and shares its
count every flush, as before). An address costs the store a few early flushes per window (a lease
is a share of the rest), never one call per failure. With one worker there are no leases: its own
count is exact, and nothing is held. Requests already past the check when the hold begins (waiting
on a store lookup) are not stopped by it. While the store cannot be reached, nothing is held:
blocking goes on on local counts alone, as below.

A worker that missed an announcement (its subscription was down) learns the block at its next
flush for that address while the window lasts: the script finds the total over the limit and
answers the block's end. (In a later window it counts afresh, as every worker does.)

Redis (every key the script touches is declared in its KEYS; one call spans many addresses,
so on a Redis Cluster a flush would need one call per hash slot):

    gw:bf:{address}:count:{n}   failures in window n (kept a window and a second)
    gw:bf:{address}:leased:{n}  failures of window n leased to workers and not used yet
    gw:bf:{address}:block       the block's end, epoch milliseconds (SET PX block_for)
    gw:blocks                   pub/sub: {"client": address, "until_ms": epoch milliseconds}

A store that cannot be reached never fails a request: the flush keeps its counts for the next
one (bounded: one count per tracked address), says so once in the log, and blocking goes on on
local counts alone. Memory is bounded: at most `max_tracked` addresses are counted and as many
blocked, the least recently seen evicted first.

Times are wall-clock epoch seconds (blocks are announced across processes and hosts); the clock
is injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import orjson

from gateway.config import BruteForceConfig, IPNetwork
from gateway.errors import RequestRefused, StoreError
from gateway.observability.metrics import AUTH_THROTTLED
from gateway.peers import is_trusted, parse_address
from gateway.store.client import Redis, slot_chunks, store_errors
from gateway.tasks import Periodic

log = logging.getLogger(__name__)

# The refusals that count as a failed authentication: a wrong, unknown, expired or replayed
# credential. Not a missing one (a client discovering it must authenticate), not a refusal of
# a valid key (403: scopes, account), not a store outage (503).
COUNTED_CODES = frozenset({"invalid_credentials", "expired_key", "invalid_signature",
                           "signature_expired", "replayed_request"})

BLOCKS = "gw:blocks"
FLUSH_INTERVAL = 0.25
REPOLL = 0.01  # how soon a held address asks again for a lease that was all leased out
HOLD_FOR = 2.0  # longest an address waits on an early flush (bounded by the store's timeout)
FLUSH_CHUNK = 500  # addresses per script call
MAX_TRACKED = 100_000
UNKNOWN_CLIENT = "unknown"
_MAX_RAW_ADDRESS = 64  # an unparsable X-Forwarded-For entry is kept as text, this long at most
IPV6_GROUP = 64  # IPv6 clients are counted per /64: one host usually holds a whole /64

# KEYS: per address, its counter, its block key, its leased count. ARGV: now (epoch ms), counter
# TTL (ms), block_for (ms), max_failures, channel, workers, then per address: its new failures,
# how many of them were used from a lease, the lease given back, 1 to ask for a lease (else 0),
# and the address. Answers per address: the shared total, the end of its block (epoch ms; 0 if
# none), and the lease granted.
_FLUSH = """
local now, ttl, block = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, channel, workers = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local out = {}
for i = 1, #KEYS / 3 do
  local counter, blocked, leases = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local at = 6 + 5 * (i - 1)
  local n, used, back = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local total = redis.call('INCRBY', counter, n)
  if total == n then
    redis.call('PEXPIRE', counter, ttl)
  end
  local grant = 0
  local want = ARGV[at + 4] == '1'
  if used + back > 0 or want then  -- (never with one worker: no leases)
    local leased = math.max(0, tonumber(redis.call('GET', leases) or '0') - used - back)
    if want and total < limit then
      grant = math.max(0, math.ceil((limit - total - leased) / workers))
      leased = leased + grant
      if grant == 0 then
        -- All that is left is leased out: the workers holding it give it back now.
        redis.call('PUBLISH', channel, cjson.encode({client = ARGV[at + 5], reclaim = 1}))
      end
    end
    redis.call('SET', leases, leased, 'PX', ttl)
  end
  local till = 0
  if total >= limit then
    till = tonumber(redis.call('GET', blocked) or '0')
    if till <= now then
      till = now + block
      redis.call('SET', blocked, till, 'PX', block)
      redis.call('PUBLISH', channel, cjson.encode({client = ARGV[at + 5], until_ms = till}))
    end
  end
  out[3 * i - 2] = total
  out[3 * i - 1] = till
  out[3 * i] = grant
end
return out
"""


def count_key(window: int, client: str) -> str:
    """An address's failures in one window. Its block key shares the hash tag: one script call
    updates both, in one Redis Cluster slot."""
    return f"gw:bf:{{{client}}}:count:{window}"


def block_key(client: str) -> str:
    return f"gw:bf:{{{client}}}:block"


def lease_key(window: int, client: str) -> str:
    """An address's failures leased to workers in one window, not used yet."""
    return f"gw:bf:{{{client}}}:leased:{window}"


# -- who is the client ----------------------------------------------------------------------------

def _identity(text: str) -> str:
    """What failures are counted under: the address (IPv6: its /64), else the text itself."""
    address = parse_address(text)
    if address is None:
        return text[:_MAX_RAW_ADDRESS] or UNKNOWN_CLIENT
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_GROUP), strict=False))
    return str(address)


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   trusted: tuple[IPNetwork, ...]) -> str:
    """The address failures are counted under: the peer, unless the peer is a trusted proxy;
    then the rightmost X-Forwarded-For entry that is not itself a trusted proxy (entries to
    its left may be anything the client chose to send). `forwarded_for` holds the header's
    values (several headers, each a comma-separated list). IPv6 addresses count per /64."""
    if not peer:
        return UNKNOWN_CLIENT
    if not trusted or not is_trusted(peer, trusted):
        # An IPv4 peer as the socket reports it is already canonical: no parsing on the way.
        return peer if ":" not in peer else _identity(peer)
    entries = [entry.strip() for value in forwarded_for for entry in value.split(",")]
    entries = [entry for entry in entries if entry]
    if not entries:
        return _identity(peer)
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None or not is_trusted(str(address), trusted):
            return _identity(entry)
    return _identity(entries[0])  # every hop is a trusted proxy: the first one is the origin


def retry_after_header(seconds: float) -> str:
    """A Retry-After value (whole seconds, at least 1) for `seconds` left of a block."""
    return str(max(1, math.ceil(seconds)))


def refusal(seconds: float) -> RequestRefused:
    """The 429 for a blocked client, with its Retry-After (counted in the metric)."""
    AUTH_THROTTLED.inc()
    return RequestRefused("too_many_requests",
                          "too many failed authentications from this address; retry later",
                          {"Retry-After": retry_after_header(seconds)})


# -- counting and blocking ------------------------------------------------------------------------


class _Count:
    __slots__ = ("known", "last", "lease", "pending", "used", "window")

    def __init__(self, window: int, now: float) -> None:
        self.window = window  # the window these counts are for
        self.last = now  # the latest failure (entries are ordered by it)
        self.known = 0  # failures in the window known to be counted in Redis (or kept locally)
        self.pending = 0  # failures not yet sent to Redis
        self.lease = 0  # failures this worker may still admit under its lease (workers > 1)
        self.used = 0  # of `pending`, how many were admitted under the lease


# What a flush sends of one address: the address, its entry, new failures, failures used from
# the lease, lease given back, a lease wanted, the window.
_Sent = tuple[str, _Count, int, int, int, bool, int]


class FailureThrottle:
    def __init__(self, redis: Redis, config: BruteForceConfig,
                 clock: Callable[[], float] = time.time, *, interval: float = FLUSH_INTERVAL,
                 max_tracked: int = MAX_TRACKED, workers: int = 1) -> None:
        self.redis = redis
        self.config = config  # replaced on reload
        self.workers = max(1, workers)  # of this instance, all counting the same addresses
        self.clock = clock
        self.interval = interval
        self.max_tracked = max_tracked
        self._counts: OrderedDict[str, _Count] = OrderedDict()  # least recently failed first
        self._dirty: set[str] = set()  # addresses with pending failures
        self._blocks: OrderedDict[str, float] = OrderedDict()  # address -> until
        self._held: dict[str, float] = {}  # address -> end of its hold (also in _blocks)
        self._leased: set[str] = set()  # addresses holding a lease (given back when quiet)
        self._reclaimed: set[str] = set()  # leases another worker asked back
        self._flushed: asyncio.Future[None] | None = None  # done when the next flush ends
        self._flush_script = redis.register_script(_FLUSH)
        self._flushing = asyncio.Lock()
        # A held address asks again soon: the lease it waits for is being given back.
        self._flushes = Periodic("brute-force flush",
                                 lambda: REPOLL if self._held else self.interval, self._share,
                                 self._share_failed)
        self._failing = False  # the store refused the last flush (said once in the log)

    # -- the request path (synchronous, memory only) ---------------------------------------------

    def held(self, client: str) -> bool:
        """`client` is held (not blocked) until an early flush answers: see `settled`."""
        return client in self._held

    async def settled(self, client: str) -> None:
        """Wait (at most HOLD_FOR) until `client` is no longer held: the early flush under way
        brings a lease (or the block). A held request waits a round trip to the store rather
        than being refused below the limit."""
        deadline = time.monotonic() + HOLD_FOR
        while client in self._held:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._flushed is None:
                self._flushed = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):  # (not wait_for: see gateway.tasks)
                async with asyncio.timeout(left):
                    await asyncio.shield(self._flushed)

    def retry_after(self, client: str) -> float | None:
        """Seconds left if `client` is blocked (or held), else None."""
        if not self._blocks:
            return None
        until = self._blocks.get(client)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self._blocks[client]
            return None
        if self.config.max_failures <= 0:  # turned off by a reload
            return None
        return left

    def record_failure(self, client: str) -> None:
        """One failed authentication (a code in COUNTED_CODES) from `client`."""
        config = self.config
        if config.max_failures <= 0:
            return
        now = self.clock()
        window = int(now // config.window)
        entry = self._counts.get(client)
        if entry is None:
            entry = self._counts[client] = _Count(window, now)
            while len(self._counts) > self.max_tracked:
                evicted, _ = self._counts.popitem(last=False)
                self._dirty.discard(evicted)
        else:
            self._counts.move_to_end(client)
            if entry.window != window:
                # A new window. Unsent failures of the old one (a flush interval's worth, or
                # an outage's) no longer count against the address, and its lease ends.
                entry.window, entry.known, entry.pending = window, 0, 0
                entry.lease = entry.used = 0
        entry.last = now
        entry.pending += 1
        self._dirty.add(client)
        if entry.known + entry.pending >= config.max_failures:
            self._block(client, now + config.block_for, now)
        elif self.workers > 1:
            if entry.lease:
                entry.lease -= 1
                entry.used += 1
            if not entry.lease and not self._failing:
                self._hold(client, now)  # the lease is used up (or there was none): no more
                #                          failures are admitted here until another comes

    def _hold(self, client: str, now: float) -> None:
        """Refuse `client` here until an early flush has brought a lease (or the block)."""
        until = now + HOLD_FOR
        current = self._blocks.get(client)
        if current is not None and current > until:
            return  # blocked: no lease is waited for
        self._held[client] = until
        self._block(client, until, now)
        self._flushes.wake()  # an early flush

    def _settle(self, client: str, entry: _Count | None, now: float) -> None:
        """After a flush: a held address is let go once it has a lease again."""
        held = self._held.get(client)
        if held is None or (entry is not None and not entry.lease and not self._failing):
            return  # (a hold left without a lease ends by itself, or at a later flush)
        del self._held[client]
        if self._blocks.get(client) == held:
            del self._blocks[client]

    def _release_holds(self) -> None:
        """The store did not answer: nothing waits on it; local counts alone decide."""
        for client, held in self._held.items():
            if self._blocks.get(client) == held:
                del self._blocks[client]
        self._held.clear()

    # -- blocks from elsewhere -------------------------------------------------------------------

    def apply_block(self, client: str, until: float) -> None:
        """Block `client` until `until` (epoch seconds), e.g. as another worker announced."""
        if self.config.max_failures <= 0:
            return
        self._block(client, until, self.clock())

    def handle_message(self, payload: bytes) -> None:
        """A message of the BLOCKS channel (give this to InvalidationListener). Never raises."""
        try:
            event = orjson.loads(payload)
            if isinstance(event, dict) and event.get("reclaim") and \
                    isinstance(event.get("client"), str):
                self._reclaim_lease(event["client"])
                return
            client, until_ms = event["client"], event["until_ms"]
            if not isinstance(client, str) or not client or isinstance(until_ms, bool) or \
                    not isinstance(until_ms, int | float):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring malformed brute-force block message")
            return
        self.apply_block(client, until_ms / 1000)

    def _reclaim_lease(self, client: str) -> None:
        """Another worker found what is left of `client`'s budget leased out: a lease held
        here goes back at once (used or not, a share is asked for afresh)."""
        entry = self._counts.get(client)
        if entry is not None and entry.lease:
            self._reclaimed.add(client)
            self._flushes.wake()  # an early flush

    def _block(self, client: str, until: float, now: float) -> None:
        current = self._blocks.get(client)
        if until <= now or (current is not None and current >= until):
            return
        self._blocks[client] = until
        self._blocks.move_to_end(client)
        if self._held.get(client, until) != until:
            del self._held[client]  # blocked now: the hold is over
        while len(self._blocks) > self.max_tracked:
            self._blocks.popitem(last=False)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Addresses counted, addresses with unsent failures, addresses blocked."""
        return len(self._counts), len(self._dirty), len(self._blocks)

    # -- sharing (the background task) -----------------------------------------------------------

    def prune(self) -> None:
        """Forget windows that are over and blocks that have ended. Entries are kept in about
        the order they go stale, so this only looks at the ones it removes (plus one)."""
        now = self.clock()
        window = self.config.window
        while self._counts:
            client, entry = next(iter(self._counts.items()))
            if now - entry.last < window:
                break
            del self._counts[client]
            self._dirty.discard(client)
        while self._blocks:
            client, until = next(iter(self._blocks.items()))
            if until > now:
                break
            del self._blocks[client]
        for client in [c for c, until in self._held.items() if until <= now]:
            del self._held[client]

    async def flush(self) -> None:
        """Send the unsent failures; block what the shared totals say. Raises StoreError (the
        failures are then kept for the next flush). One flush at a time."""
        async with self._flushing:
            try:
                await self._flush()
            finally:
                done, self._flushed = self._flushed, None
                if done is not None and not done.done():
                    done.set_result(None)

    async def _flush(self) -> None:
        self.prune()
        config = self.config
        if not (self._dirty or self._leased or self._held):
            return
        if config.max_failures <= 0:
            self._dirty.clear()
            self._leased.clear()
            self._release_holds()
            self._counts.clear()
            return
        batch: list[_Sent] = []
        leasing = self.workers > 1
        reclaimed, self._reclaimed = self._reclaimed, set()
        for client in self._dirty | self._leased | self._held.keys():
            entry = self._counts.get(client)
            if entry is None:
                continue
            # An address quiet since the last flush gives its lease back (as does one whose
            # lease another worker needs); one that failed with none left (held) asks for one.
            back = entry.lease if leasing and client not in self._held and (
                not entry.pending or client in reclaimed) else 0
            want = leasing and not entry.lease and (entry.pending > 0 or client in self._held)
            if not (entry.pending or back or want):
                continue
            batch.append((client, entry, entry.pending, entry.used, back, want, entry.window))
            entry.known += entry.pending
            entry.pending = entry.used = 0
            entry.lease -= back
        self._dirty.clear()
        self._leased.clear()
        if not batch:
            return
        chunks = list(slot_chunks(self.redis, batch, lambda item: block_key(item[0]),
                                  FLUSH_CHUNK))
        for index, chunk in enumerate(chunks):
            try:
                answers = await self._send(chunk, config)
            except (StoreError, asyncio.CancelledError):
                # Kept for the next flush (after a cancellation, as at shutdown, a chunk the
                # store did apply may then count twice: an over-count, never a loss).
                self._restore(item for rest in chunks[index:] for item in rest)
                self._release_holds()
                raise
            self._apply(chunk, answers)

    async def _send(self, chunk: Sequence[_Sent], config: BruteForceConfig) -> list[int]:
        keys: list[str] = []
        # A counter outlives its window by a second: instances' clocks differ a little.
        args: list[str | int] = [int(self.clock() * 1000), int(config.window * 1000) + 1000,
                                 max(1, int(config.block_for * 1000)), config.max_failures,
                                 BLOCKS, self.workers]
        for client, _, count, used, back, want, window in chunk:
            keys += [count_key(window, client), block_key(client), lease_key(window, client)]
            args += [count, used, back, int(want), client]
        with store_errors():
            answers = await self._flush_script(keys=keys, args=args)
        return [int(value) for value in answers]

    def _apply(self, chunk: Iterable[_Sent], answers: list[int]) -> None:
        now = self.clock()
        for index, (client, entry, _, _, _, _, window) in enumerate(chunk):
            total, until_ms, grant = answers[3 * index: 3 * index + 3]
            current = self._counts.get(client)
            if current is entry and entry.window == window:
                entry.known = total  # every worker's failures in the shared window
                entry.lease += grant
                if entry.lease:
                    self._leased.add(client)
                if total + entry.pending >= self.config.max_failures and not until_ms:
                    until_ms = int((now + self.config.block_for) * 1000)
            if until_ms:
                self._block(client, until_ms / 1000, now)
            self._settle(client, current, now)

    def _restore(self, unsent: Iterable[_Sent]) -> None:
        for client, entry, count, used, back, _, window in unsent:
            # Still the same window of a still-tracked address: keep the count for next time.
            if self._counts.get(client) is entry and entry.window == window:
                entry.known -= count
                entry.pending += count
                entry.used += used
                entry.lease += back
                self._dirty.add(client)
                if entry.lease:
                    self._leased.add(client)

    async def _share(self) -> None:
        await self.flush()
        if self._failing:
            log.info("brute-force counts shared again")
        self._failing = False

    def _share_failed(self, exc: Exception) -> None:
        if not isinstance(exc, StoreError):  # a bug must not end the flushes for good
            log.error("brute-force flush failed", exc_info=exc)
            return
        if not self._failing:
            log.warning("brute-force counts cannot be shared (%s); blocking on this worker's "
                        "counts until the store answers", exc)
        self._failing = True

    def start(self) -> None:
        self._flushes.start()

    async def close(self) -> None:
        """Stop the background flushes and share what is left, if the store answers."""
        await self._flushes.stop()
        try:
            await self.flush()
        except StoreError as exc:
            log.info("brute-force counts not shared at shutdown: %s", exc)
