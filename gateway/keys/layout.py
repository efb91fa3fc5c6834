"""Key names of the key table, and the parts of its layout that must know about Redis Cluster
(SPEC §7): slot grouping, pipelined script calls, and the move of last-use times from the old
single hash to one string per key. The table itself is described in store.py.

Cluster rules kept here: a script call or a multi-key command touches keys of one slot only
(`slot_groups`), and everything else goes out as single-key commands in non-transactional
pipelines, which redis-py's cluster pipeline routes node by node. On one Redis (or a Sentinel
master) the same code makes one group, so a listing stays one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from gateway.errors import StoreError, StoreUnavailable
from gateway.store.client import Redis, slot_groups, store_errors

SECRET = "gw:secret:"  # noqa: S105 - a key prefix, not a password
KEY = "gw:key:"
ACCOUNT = "gw:account:"
KEYS_INDEX = "gw:keys"
ACCOUNTS_INDEX = "gw:accounts"
ACCOUNT_KEYS = "gw:account-keys:"
LAST_USED = "gw:last-used"  # layout 1: one hash of every key's last use (read until migrated)
LAST_USED_PREFIX = "gw:last-used:"  # layout 2: one string per key, in its record's slot
LAYOUT = "gw:layout"
LAYOUT_VERSION = "2"
EVENTS = "gw:events"
AUDIT = "gw:audit"
HMAC_KEYS = "gw:hmac-keys"
DEMO_KEY_ID = "gw:demo-key-id"

# One script call merges at most this many last-use times. Each costs Redis an EXISTS, a GET
# and perhaps a SET inside the script, 4-7 µs all told: a call holds Redis for 1-2 ms
# (measured: tests/integration/test_last_used_scale.py), so a PING queued behind the calls
# of several flushing workers waits a few ms for each, not tens.
PAIRS_PER_CALL = 200
# A flush sends at most this many times per round trip, and waits for the answer before the
# next: a worker with a large backlog keeps one bounded batch in Redis's input at a time, and
# each round trip stays far inside `redis.timeout`.
PAIRS_PER_ROUND = 1000

# Compare-and-set of one record: the change lands only on the exact bytes it was computed
# from. 1 = written, 0 = the record changed meanwhile, -1 = the record is gone (a missing key
# never matches, so a delete can never be undone by a late update).
CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current then
  return -1
end
if current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# KEYS: (record, last-use key) pairs; ARGV: one time per pair. A time is written only while
# the record exists (a deleted key's pending use is dropped, never written back) and only
# forward (several workers flush; the latest use wins, and a resend changes nothing).
# Answers the 1-based numbers of the pairs it wrote.
MERGE_LAST_USED_SCRIPT = """
local written = {}
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then
    local current = redis.call('GET', KEYS[2 * i])
    if (not current) or tonumber(current) < tonumber(ARGV[i]) then
      redis.call('SET', KEYS[2 * i], ARGV[i])
      written[#written + 1] = i
    end
  end
end
return written
"""

# Layout 1 -> 2: drop the old hash's fields that still hold what was merged. A field an old
# gateway wrote again meanwhile stays for the next migration rather than being lost.
DROP_MIGRATED_SCRIPT = """
local dropped = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    dropped = dropped + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return dropped
"""


def last_used_key(key_id: str) -> str:
    """The hash tag is the record's own name, so both live in one cluster slot and one script
    call can look at the record while it writes the time. (Ids never hold braces.)"""
    return f"{LAST_USED_PREFIX}{{{KEY}{key_id}}}"


def chunked(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def mget(redis: Redis, names: Sequence[str]) -> list[bytes | None]:
    """GET of every name, in order: one MGET on one Redis, one MGET per slot on a cluster
    (pipelined: one round trip per node)."""
    if not names:
        return []
    if not isinstance(redis, RedisCluster):
        return cast(list[bytes | None], await redis.mget(list(names)))
    groups = slot_groups(redis, names)
    async with redis.pipeline(transaction=False) as pipe:
        for group in groups:
            # execute_command: redis-py blocks the mget() method in cluster pipelines, since it
            # cannot split it; these are split already.
            pipe.execute_command("MGET", *(names[i] for i in group))
        replies = await pipe.execute()
    values: list[bytes | None] = [None] * len(names)
    for group, reply in zip(groups, replies, strict=True):
        for position, value in zip(group, reply, strict=True):
            values[position] = value
    return values


class PipelinedScript:
    """A script sent as EVALSHA calls inside non-transactional pipelines, on one Redis or a
    cluster (each call's keys in one slot). A server that lost its script cache (a restart, a
    failover) answers NOSCRIPT: the script is loaded (on every master of a cluster) and those
    calls are sent once more."""

    def __init__(self, redis: Redis, text: str) -> None:
        self.redis = redis
        self.text = text
        self._script = redis.register_script(text)

    async def run(self, calls: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[Any]:
        """Each call's reply, or the exception it got, in order. Errors of the whole round
        trip (connection lost, timeout) are raised."""
        replies = await self._send(calls)
        retry = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if retry:
            await self.redis.script_load(self.text)
            again = await self._send([calls[i] for i in retry])
            for position, reply in zip(retry, again, strict=True):
                replies[position] = reply
        return replies

    async def _send(self, calls: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[Any]:
        if not calls:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


@dataclass(slots=True)
class Flushed:
    """One round trip of a last-use flush: the ids Redis has answered for (written, or not
    needed: an older time, or a deleted key) and the times it wrote."""

    confirmed: list[str] = field(default_factory=list)
    written: dict[str, float] = field(default_factory=dict)


def _translated(exc: Exception) -> StoreError:
    """A redis-py error carried in a pipeline's replies, as the gateway's own error."""
    try:
        with store_errors():
            raise exc
    except StoreError as translated:
        return translated
    return StoreError(f"key store error: {exc}")  # pragma: no cover - store_errors raised


class LastUseTable:
    """Last-use times: `gw:last-used:{gw:key:<id>}`, and layout 1's hash until migrated."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._merge = PipelinedScript(redis, MERGE_LAST_USED_SCRIPT)
        self._drop_migrated = redis.register_script(DROP_MIGRATED_SCRIPT)

    async def write(self, times: Mapping[str, float]) -> AsyncIterator[Flushed]:
        """Merge `times` forward-only, in script calls of at most PAIRS_PER_CALL times (one
        slot each on a cluster), PAIRS_PER_ROUND per round trip, one round trip at a time.
        Yields what each round trip confirmed; a failed round trip raises StoreError, and what
        it did not confirm is the caller's to keep (a resend is harmless: forward-only)."""
        entries = list(times.items())  # taken now: the caller may change `times` meanwhile
        calls: list[Sequence[tuple[str, float]]] = []
        for group in slot_groups(self.redis, [KEY + key_id for key_id, _ in entries]):
            calls.extend([entries[i] for i in part] for part in chunked(group, PAIRS_PER_CALL))
        start = 0
        while start < len(calls):
            end, size = start, 0
            while end < len(calls) and (end == start
                                        or size + len(calls[end]) <= PAIRS_PER_ROUND):
                size += len(calls[end])
                end += 1
            flushed, error = await self._round(calls[start:end])
            start = end
            yield flushed
            if error is not None:
                raise error

    async def _round(self, calls: Sequence[Sequence[tuple[str, float]]]
                     ) -> tuple[Flushed, StoreError | None]:
        script_calls: list[tuple[list[str], list[str]]] = []
        for call in calls:
            keys: list[str] = []
            for key_id, _ in call:
                keys += [KEY + key_id, last_used_key(key_id)]
            script_calls.append((keys, [f"{when:.3f}" for _, when in call]))
        with store_errors():
            replies = await self._merge.run(script_calls)
        flushed = Flushed()
        error: StoreError | None = None
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                error = _translated(reply)  # its entries stay unconfirmed: sent again later
                continue
            flushed.confirmed.extend(key_id for key_id, _ in call)
            for number in reply:
                key_id, when = call[int(number) - 1]
                flushed.written[key_id] = when
        return flushed, error

    async def read(self, ids: Sequence[str]) -> dict[str, float]:
        """One round trip on one Redis: the per-key strings (an MGET per slot on a cluster)
        and, for times not yet migrated, the old hash; the later of the two wins."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        names = [last_used_key(i) for i in ids]
        groups = slot_groups(self.redis, names)
        try:
            with store_errors():
                async with self.redis.pipeline(transaction=False) as pipe:
                    for group in groups:
                        pipe.execute_command("MGET", *(names[i] for i in group))
                    pipe.hmget(LAST_USED, ids)
                    *replies, old = await pipe.execute()
        except StoreUnavailable:
            if not isinstance(self.redis, RedisCluster):
                raise
            # A slot moving between nodes: redis-py's cluster pipeline does not follow ASK,
            # its single commands do. One command per key, this once.
            with store_errors():
                singles = await asyncio.gather(*(self.redis.get(n) for n in names))
                old = await self.redis.hmget(LAST_USED, ids)
            replies = [[singles[i] for i in group] for group in groups]
        found: dict[str, float] = {}
        for group, reply in zip(groups, replies, strict=True):
            for position, value in zip(group, reply, strict=True):
                if value is not None:
                    found[ids[position]] = float(value)
        for key_id, value in zip(ids, old, strict=True):
            if value is not None and float(value) > found.get(key_id, 0.0):
                found[key_id] = float(value)
        return found

    async def migrate(self) -> int:
        """Layout 1 -> 2: merge the old hash's times into the per-key strings (only for keys
        that exist, only forward), drop the merged fields, then mark the layout. Idempotent
        and safe to run from several processes at once: the merge is forward-only, and a field
        is dropped only while it still holds what was merged. One HSCAN round trip and a SET
        when there is nothing to move. Returns how many fields this call dropped."""
        moved = 0
        cursor = 0
        while True:
            with store_errors():
                cursor, reply = await self.redis.hscan(LAST_USED, cursor, count=PAIRS_PER_CALL)
            fields = cast(dict[bytes, bytes], reply)
            times: dict[str, float] = {}
            for raw_id, raw_when in fields.items():
                try:
                    times[raw_id.decode()] = float(raw_when)
                except ValueError:
                    continue  # not a time: dropped below with the rest
            async for _ in self.write(times):
                pass
            for part in chunked(list(fields.items()), PAIRS_PER_CALL):
                args = [item for pair in part for item in pair]
                with store_errors():
                    moved += int(await self._drop_migrated(keys=[LAST_USED], args=args))
            if int(cursor) == 0:
                break
        with store_errors():
            await self.redis.set(LAYOUT, LAYOUT_VERSION)
        return moved
