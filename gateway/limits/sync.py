"""The I/O edge of rate limits and quotas: one background sync per worker exchanges leases,
give-backs, outage counts and usage counts with Redis, in one script call per cluster slot.

Why one script and one batch. The budget is 0.1 Redis commands per request at the fleet
target (500 req/s over six workers): each worker may send a few commands a second, whatever
its traffic. So every sync (a `gateway.tasks.Periodic`, every `Settings.interval`, or at once
when a request waits for a lease) sends everything it has for one slot in *one* EVALSHA: rate
buckets, quota counts, the counts a fail-open quota admitted while Redis was away, and usage
counters. The keys of a key record's counters carry the record's name as hash tag
(`gw:limit:{gw:key:ID}:...`, as gateway/keys/layout.py does for last-use times), so one call
covers them on a cluster; an account's counters live in the account's slot. The calls of one
sync go out in one non-transactional pipeline, which redis-py's cluster client splits by node.

The Lua script is the authority (Redis's TIME, so worker clocks do not matter for rates):
- `R` (rate): a token bucket as a hash {t: tokens, ms: last refill}; refill at the rate up to
  the burst, add the give-back, take what was admitted during an outage (down to empty), grant
  min(asked, whole tokens), answer grant and what is left.
  The key expires once it would be full again anyway.
- `Q` (quota): a used-count per period key (`...:quota:day:2026-12-03`); lower by the
  give-back, grant min(asked, limit - used), answer grant and what is left. Period keys expire
  a day after their period ends; a total's never.
- `O` (owed): INCRBY the count of a period, for what was admitted while Redis was away.
- `U` (usage): HINCRBY fields "HHMM:ok" / "HHMM:<reason>" of `gw:usage:{scope}:YYYY-MM-DD`,
  kept 8 days (7 full days visible); at most 1440 x (1 + reasons) fields a key a day.

Failures. A sync that fails (Redis down, a timeout) leaves the table offline (local.py:
share-based rates, fail-open or -closed quotas) and keeps the give-backs, owed counts and usage
to send again; the next turn tries again. A timeout whose call did run in Redis is then counted
twice: a give-back twice (a rate admits a few more, bounded by the lease) or an owed count twice
(a quota under-used), never a quota overshoot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from gateway.errors import StoreError
from gateway.limits.leases import Ask, Decision, Limit
from gateway.limits.local import LeaseTable
from gateway.limits.policy import Quota, Rate, next_reset
from gateway.store.client import Redis, store_errors
from gateway.tasks import Periodic

log = logging.getLogger(__name__)

LIMIT_PREFIX = "gw:limit:"
USAGE_PREFIX = "gw:usage:"
USAGE_KEEP = 8 * 86_400  # seconds: today and the 7 days before it
PERIOD_KEEP = 86_400  # a period's quota count stays this long after the period ends
USAGE_FLUSH = 5.0  # seconds: usage of scopes without a lease sync waits at most this long
OPS_PER_CALL = 200
MIN_GAP_FRACTION = 0.25  # a woken sync runs at most once every interval * this
WAIT_LIMIT = 1.0  # seconds a request waits for a lease before it is decided without one

SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
local a = 1
for k = 1, #KEYS do
  local op = ARGV[a]
  local key = KEYS[k]
  if op == 'R' then
    local per_ms, burst = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local take, refund = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    local debit = tonumber(ARGV[a + 5])
    a = a + 6
    local state = redis.call('HMGET', key, 't', 'ms')
    local tokens = burst
    if state[1] then
      local elapsed = math.max(0, now_ms - tonumber(state[2]))
      tokens = math.min(burst, tonumber(state[1]) + elapsed * per_ms)
    end
    tokens = math.max(0, math.min(burst, tokens + refund) - debit)
    local grant = math.max(0, math.min(take, math.floor(tokens)))
    tokens = tokens - grant
    redis.call('HSET', key, 't', tostring(tokens), 'ms', tostring(now_ms))
    redis.call('PEXPIRE', key, math.ceil((burst - tokens) / per_ms) + 1000)
    out[#out + 1] = grant
    out[#out + 1] = math.floor(tokens)
  elseif op == 'Q' then
    local limit, take = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local refund, expire_at = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    a = a + 5
    local used = math.max(0, tonumber(redis.call('GET', key) or '0') - refund)
    local grant = math.max(0, math.min(take, limit - used))
    used = used + grant
    redis.call('SET', key, used)
    if expire_at > 0 then redis.call('EXPIREAT', key, expire_at) end
    out[#out + 1] = grant
    out[#out + 1] = math.max(0, limit - used)
  elseif op == 'O' then
    local count, expire_at = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    a = a + 3
    redis.call('INCRBY', key, count)
    if expire_at > 0 then redis.call('EXPIREAT', key, expire_at) end
  else
    local fields, keep = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    a = a + 3
    for f = 1, fields do
      redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
      a = a + 2
    end
    redis.call('EXPIRE', key, keep)
  end
end
return out
"""


def rate_key(limit: Limit) -> str:
    return f"{LIMIT_PREFIX}{{{limit.scope}}}:rate:{limit.variant}"


def quota_key(limit: Limit, label: str) -> str:
    assert isinstance(limit.rule, Quota)
    return f"{LIMIT_PREFIX}{{{limit.scope}}}:quota:{limit.rule.period}:{label}:{limit.variant}"


def usage_key(scope: str, day: str) -> str:
    return f"{USAGE_PREFIX}{{{scope}}}:{day}"


async def read_usage(redis: Redis, scope: str, now: float,
                     days: int = 7) -> dict[str, dict[str, int]]:
    """A key's usage per minute over the last `days` UTC days (today included):
    {"2026-12-03T12:00": {"ok": 42, "rate_limited": 3}, ...}, oldest first. One pipeline of
    HGETALLs (all in the key's slot). For the CLI, the admin API and the web page."""
    day_names = [datetime.fromtimestamp(now - 86_400 * back, UTC).strftime("%Y-%m-%d")
                 for back in range(days - 1, -1, -1)]
    with store_errors():
        async with redis.pipeline(transaction=False) as pipe:
            for day in day_names:
                pipe.hgetall(usage_key(scope, day))
            replies = await pipe.execute()
    usage: dict[str, dict[str, int]] = {}
    for day, fields in zip(day_names, replies, strict=True):
        for name, count in sorted(fields.items()):
            minute, _, reason = name.decode().partition(":")
            usage.setdefault(f"{day}T{minute[:2]}:{minute[2:]}", {})[reason] = int(count)
    return usage


def _quota_expiry(quota: Quota, label_time: float) -> int:
    end = next_reset(quota.period, label_time)
    return 0 if end is None else math.ceil(end) + PERIOD_KEEP


def _label_time(quota: Quota, label: str, wall: float) -> float:
    """A moment inside the period `label` names (for owed counts of an earlier period)."""
    if quota.period == "total":
        return wall
    fmt = "%Y-%m-%d" if quota.period == "day" else "%Y-%m"
    return datetime.strptime(label, fmt).replace(tzinfo=UTC).timestamp()


@dataclass(slots=True)
class _Call:
    """One script call: its keys, arguments, and the asks whose answers it returns."""

    keys: list[str] = field(default_factory=list)
    args: list[str | int] = field(default_factory=list)
    answered: list[Ask] = field(default_factory=list)  # in the order of the answers
    usage: dict[tuple[str, str, str], int] = field(default_factory=dict)  # counts it carries


class LimitSync:
    """The worker's limiter: decisions from its `LeaseTable`, Redis reached only by the
    background sync. `check` is what the request path calls."""

    def __init__(self, redis: Redis, table: LeaseTable | None = None, *,
                 usage_flush: float = USAGE_FLUSH, name: str = "limits-sync") -> None:
        self.redis = redis
        self.table = table or LeaseTable()
        self.usage_flush = usage_flush
        self.periodic = Periodic(name, lambda: self.table.settings.interval, self.sync_once,
                                 on_error=self._on_error)
        self.sha: str | None = None
        self.commands_sent = 0  # script calls sent, for the commands-per-request figures
        self.syncs = 0
        self._last_sync = -math.inf
        self._last_usage_flush = time.monotonic()
        self._synced: asyncio.Future[None] | None = None

    # -- lifecycle

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        """Stop syncing, after one last sync that gives back unused tokens and flushes usage
        (a worker stopped abruptly skips this: its tokens are merely lost, under-use)."""
        await self.periodic.stop()
        self.table.closing = True
        for lease in self.table.leases.values():
            lease.refund += lease.tokens
            lease.tokens = 0
            lease.last_used = -math.inf
        with contextlib.suppress(StoreError):
            await self.sync_once(flush_usage=True)

    # -- the request path

    def decide(self, limits: Sequence[Limit], usage_scope: str | None = None) -> Decision:
        """Pure and immediate; may answer `wait` (then call `check`, or wait for `synced`)."""
        return self.table.decide(limits, usage_scope)

    async def check(self, limits: Sequence[Limit], usage_scope: str | None = None) -> Decision:
        """The decision for a request: immediate when the worker holds leases for it (the usual
        case), else after the next background sync (at most WAIT_LIMIT seconds)."""
        decision = self.table.decide(limits, usage_scope)
        if decision.outcome != "wait":
            return decision
        return await self.decide_after_sync(limits, usage_scope)

    async def decide_after_sync(self, limits: Sequence[Limit],
                                usage_scope: str | None = None) -> Decision:
        """After `decide` answered `wait` (the request path calls `decide` itself, without an
        await): the decision once the syncs it wakes have run, at most WAIT_LIMIT seconds."""
        deadline = time.monotonic() + WAIT_LIMIT
        while True:
            left = deadline - time.monotonic()
            if left > 0:
                await self.synced(left)
            decision = self.table.decide(limits, usage_scope, final=left <= 0)
            if decision.outcome != "wait":
                return decision

    async def synced(self, patience: float = WAIT_LIMIT) -> None:
        """Wake the sync and wait until it has run (or `patience` seconds)."""
        if self._synced is None or self._synced.done():
            self._synced = asyncio.get_running_loop().create_future()
        waiter = self._synced
        self.periodic.wake()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience):
                await asyncio.shield(waiter)

    # -- the background sync

    def _on_error(self, exc: Exception) -> None:
        log.warning("rate-limit sync failed: %s", exc)

    async def sync_once(self, flush_usage: bool = False) -> None:
        gap = self.table.settings.interval * MIN_GAP_FRACTION - (time.monotonic()
                                                                 - self._last_sync)
        if gap > 0:
            await asyncio.sleep(gap)
        self._last_sync = time.monotonic()
        waiter, self._synced = self._synced, None
        try:
            await self._exchange(flush_usage)
        finally:
            self.syncs += 1
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _exchange(self, flush_usage: bool) -> None:
        table = self.table
        asks = table.plan()
        try:
            await self._send_asks(asks, flush_usage)
        except BaseException:
            table.failed(asks)  # also when cancelled mid-call: the asks are made again
            raise

    async def _send_asks(self, asks: list[Ask], flush_usage: bool) -> None:
        table = self.table
        now = time.monotonic()
        flush_usage = flush_usage or now - self._last_usage_flush >= self.usage_flush
        calls: dict[int, list[_Call]] = {}
        for ask in asks:
            self._add_ask(calls, ask)
        usage = table.take_usage()
        by_key: dict[str, dict[tuple[str, str, str], int]] = {}
        kept: dict[tuple[str, str, str], int] = {}
        for entry, count in usage.items():
            key = usage_key(entry[0], entry[1])
            if flush_usage or self._group(key) in calls:
                by_key.setdefault(key, {})[entry] = count
            else:
                kept[entry] = count
        if flush_usage:
            self._last_usage_flush = now
        table.restore_usage(kept)
        for key, entries in by_key.items():
            call = self._call_for(calls, key)
            call.keys.append(key)
            call.args += ["U", len(entries), USAGE_KEEP]
            for (_, _, name), count in entries.items():
                call.args += [name, count]
            call.usage.update(entries)
        every = [call for group in calls.values() for call in group]
        if not every:
            return
        try:
            replies = await self._send(every)
        except BaseException:
            for call in every:
                table.restore_usage(call.usage)
            raise
        failed: list[Ask] = []
        for call, reply in zip(every, replies, strict=True):
            if isinstance(reply, Exception):
                failed += call.answered
                table.restore_usage(call.usage)
                continue
            assert isinstance(reply, list)
            for i, ask in enumerate(call.answered):
                table.settle(ask, int(reply[2 * i]), float(reply[2 * i + 1]))
        if failed:
            table.failed(failed)
            log.warning("rate-limit sync: %d of %d calls failed", len(failed), len(every))

    def _group(self, key: str) -> int:
        return key_slot(key.encode()) if isinstance(self.redis, RedisCluster) else 0

    def _call_for(self, calls: dict[int, list[_Call]], key: str) -> _Call:
        """The call of `key`'s slot that still has room."""
        group = calls.setdefault(self._group(key), [])
        if not group or len(group[-1].keys) >= OPS_PER_CALL:
            group.append(_Call())
        return group[-1]

    def _add_ask(self, calls: dict[int, list[_Call]], ask: Ask) -> None:
        limit = ask.lease.limit
        rule = limit.rule
        if isinstance(rule, Rate):
            key = rate_key(limit)
            call = self._call_for(calls, key)
            call.keys.append(key)
            call.args += ["R", repr(rule.per_second / 1000), rule.burst, ask.take, ask.refund,
                          sum(count for _, count in ask.owed)]
            call.answered.append(ask)
            return
        wall = self.table.wall()
        key = quota_key(limit, ask.lease.period)
        call = self._call_for(calls, key)
        for label, count in ask.owed:
            if label != ask.lease.period:
                call.keys.append(quota_key(limit, label))
                call.args += ["O", count, _quota_expiry(rule, _label_time(rule, label, wall))]
        owed_now = dict(ask.owed).get(ask.lease.period, 0)
        if owed_now:
            call.keys.append(key)
            call.args += ["O", owed_now, _quota_expiry(rule, wall)]
        call.keys.append(key)
        call.args += ["Q", rule.limit, ask.take, ask.refund, _quota_expiry(rule, wall)]
        call.answered.append(ask)

    async def _send(self, calls: list[_Call]) -> list[object]:
        chunks: list[tuple[int, _Call]] = [(i, call) for i, call in enumerate(calls)]
        with store_errors():
            if self.sha is None:
                self.sha = await self.redis.script_load(SCRIPT)
                self.commands_sent += 1
            replies = await self._pipeline(chunks, use_sha=True)
            missing = [pair for pair, reply in zip(chunks, replies, strict=True)
                       if isinstance(reply, NoScriptError)]
            if missing:  # a restarted Redis forgot the script: EVAL loads it again
                again = dict(zip((i for i, _ in missing),
                                 await self._pipeline(missing, use_sha=False), strict=True))
                replies = [again.get(i, reply) for i, reply in enumerate(replies)]
        return [_translated(reply) for reply in replies]

    async def _pipeline(self, calls: list[tuple[int, _Call]], use_sha: bool) -> list[object]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, call in calls:
                # execute_command: redis-py blocks evalsha() in cluster pipelines (it cannot
                # tell a script's slot); every call here is within one slot already.
                if use_sha:
                    assert self.sha is not None
                    pipe.execute_command("EVALSHA", self.sha, len(call.keys), *call.keys,
                                         *call.args)
                else:
                    pipe.execute_command("EVAL", SCRIPT, len(call.keys), *call.keys, *call.args)
            self.commands_sent += len(calls)
            return list(await pipe.execute(raise_on_error=False))


def _translated(reply: object) -> object:
    """A call's error as the gateway's (StoreUnavailable for a node away or moving)."""
    if not isinstance(reply, Exception):
        return reply
    try:
        with store_errors():
            raise reply
    except StoreError as exc:
        return exc
