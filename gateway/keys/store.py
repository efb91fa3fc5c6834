"""The key table in Redis (SPEC §7): its layout, and every read and write of it.

Layout 2. Every name below is one Redis key; the client is one Redis, a Sentinel master, or a
Redis Cluster (records spread over the slots by their names: nothing is pinned to one node).

    gw:secret:{sha256}       -> key id            API-key secret lookup (old secret: expiring).
                             A pointer is a hint: authentication reads the record and checks the
                             presented secret's hash against its secret_hash/previous_hash, so
                             a stale pointer authenticates nothing.
    gw:key:{id}              -> KeyRecord JSON
    gw:account:{id}          -> Account JSON
    gw:keys                  zset index of every key
    gw:accounts              zset index of every account
    gw:account-keys:{id}     zset index of one account's keys
                             (index members are "<created ms, 13 digits>:<id>", all scored 0, so
                             they sort by creation then id: a stable order, and the last member
                             of a page is the cursor of the next. Listings skip a member whose
                             record is missing.)
    gw:hmac-keys             set of the HMAC key ids (is a master key needed at start-up? which
                             secrets does a master-key rotation re-encrypt?)
    gw:nonce:{key id}:{h}    a signed request's nonce, remembered while the signature could
                             still be accepted (SET NX PX: one round trip, on every instance)
    gw:last-used:{gw:key:<id>}  one key's last use, epoch seconds (3 decimals); the hash tag
                             puts it in its record's cluster slot (forward-only, batched)
    gw:last-used             layout 1's hash key id -> last use; read as a fallback, emptied
                             by `migrate`
    gw:layout                "2" once `migrate` has run
    gw:audit                 stream of management changes (who, what, when, which ids)
    gw:events                pub/sub channel of invalidations: {"kind": "key"|"account", "id"}
    gw:demo-key-id           the key `gateway run --demo` created on its first start

How changes stay atomic without a transaction over several keys (which a cluster refuses):

    update (expiry, description, reissue; account enable/disable/api_access)
        compare-and-set of the one record: written only over the exact bytes it was computed
        from (`swap_key`, `swap_account`); the service re-reads and retries a lost race, and a
        record gone meanwhile stays gone (NotFound). Then the secret pointers follow.
    delete  GETDEL of the record first (revocation is immediate, and the bytes removed say which
        pointers and index members to remove), then the rest.
    create  index members, then the record (SET NX), then the secret pointer: a crash between
        steps never leaves a key that authenticates but that listings cannot show.
    pointers  whoever writes a secret pointer reads the record afterwards and removes the
        pointer when the record is gone or no longer names it (a delete or reissue that raced).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from enum import Enum
from typing import Any, cast

import orjson

from gateway.errors import StoreError, StoreUnavailable
from gateway.keys.layout import (
    ACCOUNT,
    ACCOUNT_KEYS,
    ACCOUNTS_INDEX,
    AUDIT,
    CAS_SCRIPT,
    DEMO_KEY_ID,
    EVENTS,
    HMAC_KEYS,
    KEY,
    KEYS_INDEX,
    LAST_USED,
    SECRET,
    Flushed,
    LastUseTable,
    last_used_key,
    mget,
)
from gateway.keys.model import HMAC_KEY, Account, KeyRecord
from gateway.keys.nonces import NONCE, ReplayGuard  # noqa: F401 - part of the layout above
from gateway.store.client import Redis, store_errors

__all__ = ["ACCOUNT", "ACCOUNTS_INDEX", "ACCOUNT_KEYS", "AUDIT", "DEMO_KEY_ID", "EVENTS",
           "HMAC_KEYS", "KEY", "KEYS_INDEX", "LAST_USED", "SECRET", "Flushed", "KeyStore",
           "Swap", "index_member", "is_cursor", "ms"]

AUDIT_MAX_ENTRIES = 1_000_000
_CURSOR = re.compile(r"^\d{13}:[A-Za-z0-9_]{1,64}$", re.ASCII)


def ms(timestamp: float) -> int:
    return int(timestamp * 1000)


def index_member(created_at: float, ident: str) -> str:
    return f"{ms(created_at):013d}:{ident}"


def is_cursor(cursor: str) -> bool:
    return _CURSOR.fullmatch(cursor) is not None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _pointers(key: KeyRecord) -> dict[str, int | None]:
    """The secret pointers a record calls for: hash -> when the pointer expires (epoch ms), or
    None for never."""
    wanted: dict[str, int | None] = {}
    if key.previous_hash:
        wanted[key.previous_hash] = (max(ms(key.previous_until), 1)
                                     if key.previous_until is not None else None)
    if key.secret_hash:
        wanted[key.secret_hash] = None
    return wanted


class Swap(Enum):
    """What a compare-and-set did."""

    DONE = 1
    CHANGED = 0  # someone else changed the record since it was read: read again
    GONE = -1  # the record no longer exists


class KeyStore:
    """`confirm_replicas` (redis.confirm_replicas): the writes that decide what authenticates
    (record creations, changes and deletions) and nonce claims are answered only once that
    many replicas hold them (Redis WAIT, on the write's own connection). During a Sentinel
    failover the old master takes writes for seconds after the new one was promoted, and loses
    them when it resyncs: a revocation it took would come undone. Cut off from its replicas it
    cannot confirm, and the write is answered 503 instead of 200."""

    def __init__(self, redis: Redis, *, confirm_replicas: int = 0,
                 confirm_timeout: float = 0.5) -> None:
        self.redis = redis
        self._cas = redis.register_script(CAS_SCRIPT)
        self._confirm = confirm_replicas
        self._confirm_ms = max(int(confirm_timeout * 1000), 1)
        self.last_use = LastUseTable(redis)
        self._replay_guard = ReplayGuard(redis, confirm_replicas=confirm_replicas,
                                         confirm_timeout=confirm_timeout)

    def confirm(self, replicas: int) -> None:
        """How many replicas must hold a write from now on (the store watch lowers it while
        the master has fewer, after a failover, and restores it; see StoreWatch)."""
        self._confirm = replicas
        self._replay_guard.confirm(replicas)

    async def _write(self, *command: Any) -> Any:
        """One write of a record, confirmed on `confirm_replicas` replicas when asked."""
        if not self._confirm:
            return await self.redis.execute_command(*command)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.execute_command("WAIT", self._confirm, self._confirm_ms)
            result, acked = await pipe.execute()
        if int(acked) < self._confirm:
            raise StoreUnavailable(
                f"key store unavailable: the change is not confirmed on {self._confirm} "
                f"replica(s) ({acked}); a failover may be under way: try again")
        return result

    def confirming(self) -> tuple[int, int] | None:
        """(replicas, timeout ms) for a WAIT after a batch of writes, None when not asked."""
        return (self._confirm, self._confirm_ms) if self._confirm else None

    async def confirm_read(self) -> None:
        """With confirm_replicas, raise StoreUnavailable unless the master now has that many
        replicas (WAIT on a connection with no write of its own answers at once with the
        count): an answer read from a master that a failover cut off may be undone."""
        if self._confirm:
            with store_errors():
                await self._write("PING")

    async def _swap(self, name: str, expected: bytes, new: bytes) -> Swap:
        if not self._confirm:
            return Swap(int(await self._cas(keys=[name], args=[expected, new])))
        return Swap(int(await self._write("EVAL", CAS_SCRIPT, 1, name, expected, new)))

    # -- hot-path reads ------------------------------------------------------------------------

    async def key_id_for_secret(self, secret_hash: str) -> str | None:
        with store_errors():
            value = await self.redis.get(SECRET + secret_hash)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def get_key(self, key_id: str) -> KeyRecord | None:
        with store_errors():
            data = await self.redis.get(KEY + key_id)
        return KeyRecord.from_json(data) if data is not None else None

    async def get_account(self, account_id: str) -> Account | None:
        with store_errors():
            data = await self.redis.get(ACCOUNT + account_id)
        return Account.from_json(data) if data is not None else None

    # -- reads for a compare-and-set: the record and the exact bytes it was parsed from -------

    async def read_key(self, key_id: str) -> tuple[KeyRecord, bytes] | None:
        with store_errors():
            data = await self.redis.get(KEY + key_id)
        return (KeyRecord.from_json(data), _bytes(data)) if data is not None else None

    async def read_keys(self, ids: Sequence[str]) -> dict[str, tuple[KeyRecord, bytes]]:
        """`read_key` of several keys in one round trip; the ones gone are left out."""
        with store_errors():
            values = await mget(self.redis, [KEY + i for i in ids])
        return {i: (KeyRecord.from_json(v), _bytes(v))
                for i, v in zip(ids, values, strict=True) if v is not None}

    async def read_account(self, account_id: str) -> tuple[Account, bytes] | None:
        with store_errors():
            data = await self.redis.get(ACCOUNT + account_id)
        return (Account.from_json(data), _bytes(data)) if data is not None else None

    # -- writes (management; each change publishes its invalidation) ---------------------------

    async def put_account(self, account: Account) -> None:
        """A new account: index member first, then the record (never over an existing one)."""
        with store_errors():
            await self.redis.zadd(ACCOUNTS_INDEX,
                                  {index_member(account.created_at, account.id): 0})
            created = await self._write("SET", ACCOUNT + account.id, account.to_json(), "NX")
        if not created:
            raise StoreError(f"account id {account.id!r} is taken")
        await self.publish("account", account.id)

    async def swap_account(self, expected: bytes, new: Account) -> Swap:
        with store_errors():
            outcome = await self._swap(ACCOUNT + new.id, expected, new.to_json())
        if outcome is Swap.DONE:
            await self.publish("account", new.id)
        return outcome

    async def delete_account(self, account: Account) -> Account | None:
        """Remove the account's record and its index member; the account's keys and their index
        are the caller's (see KeyService.delete_account). Returns the record removed, or None
        when it was gone already."""
        with store_errors():
            data = await self._write("GETDEL", ACCOUNT + account.id)
            if data is None:
                return None
            removed = Account.from_json(data)
            await self.redis.zrem(ACCOUNTS_INDEX, index_member(removed.created_at, removed.id))
        await self.publish("account", account.id)
        return removed

    async def forget_account_keys(self, account_id: str) -> None:
        """Drop a deleted account's key index (members of keys that never got a record)."""
        with store_errors():
            await self.redis.delete(ACCOUNT_KEYS + account_id)

    async def create_key(self, key: KeyRecord) -> bool:
        """Store a new key. False when a concurrent delete removed it before it was complete
        (its pointer is removed again)."""
        member = index_member(key.created_at, key.id)
        with store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(KEYS_INDEX, {member: 0})
                pipe.zadd(ACCOUNT_KEYS + key.account_id, {member: 0})
                if key.type == HMAC_KEY:
                    pipe.sadd(HMAC_KEYS, key.id)
                await pipe.execute()
            created = await self._write("SET", KEY + key.id, key.to_json(), "NX")
        if not created:
            raise StoreError(f"key id {key.id!r} is taken")
        return await self._move_pointers(None, key)

    async def swap_key(self, expected: bytes, old: KeyRecord, new: KeyRecord) -> Swap:
        """Write `new` over the record only if it still holds `expected` (the bytes `old` was
        read from); then move the secret pointers when the secret changed."""
        with store_errors():
            outcome = await self._swap(KEY + new.id, expected, new.to_json())
        if outcome is Swap.DONE:
            await self._move_pointers(old, new)
            await self.publish("key", new.id)
        return outcome

    async def replace_key(self, old: KeyRecord, new: KeyRecord) -> bool:
        """Store `new` in place of whatever the record holds now, if it still exists (for tools
        and tests that craft records; lifecycle changes go through `swap_key`)."""
        with store_errors():
            replaced = await self.redis.set(KEY + new.id, new.to_json(), xx=True)
        if replaced:
            await self._move_pointers(old, new)
            await self.publish("key", new.id)
        return bool(replaced)

    async def _move_pointers(self, old: KeyRecord | None, new: KeyRecord) -> bool:
        """Point `new`'s secret hashes at it and drop the pointers only `old` named; then make
        sure no pointer just set outlives a record that a racing delete or reissue changed.
        Returns False when the record is gone."""
        want = _pointers(new)
        had = _pointers(old) if old is not None else {}
        fresh = {h: at for h, at in want.items() if h not in had or had[h] != at}
        stale = [h for h in had if h not in want]
        if not fresh and not stale:
            return True
        with store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for secret_hash, expires_ms in fresh.items():
                    # The old secret's pointer disappears by itself when its grace ends.
                    pipe.set(SECRET + secret_hash, new.id, pxat=expires_ms)
                for secret_hash in stale:
                    pipe.delete(SECRET + secret_hash)
                await pipe.execute()
            if not fresh:
                return True
            data = await self.redis.get(KEY + new.id)
            current = KeyRecord.from_json(data) if data is not None else None
            named = _pointers(current) if current is not None else {}
            orphans = [SECRET + h for h in fresh if h not in named]
            if orphans:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for name in orphans:
                        pipe.delete(name)
                    await pipe.execute()
        return current is not None

    async def delete_key(self, key: KeyRecord | str) -> KeyRecord | None:
        """Delete a key: its record first (it no longer authenticates from then on), then what
        the removed record names. Returns the record removed, or None when it was gone (given
        a record, what it names is removed all the same: the rest of a delete that stopped
        half-way)."""
        key_id = key if isinstance(key, str) else key.id
        with store_errors():
            data = await self._write("GETDEL", KEY + key_id)
            removed = KeyRecord.from_json(data) if data is not None else None
            names = removed or (key if isinstance(key, KeyRecord) else None)
            if names is None:
                return None
            member = index_member(names.created_at, key_id)
            async with self.redis.pipeline(transaction=False) as pipe:
                for secret_hash in {names.secret_hash, names.previous_hash}:
                    if secret_hash:
                        pipe.delete(SECRET + secret_hash)
                pipe.zrem(KEYS_INDEX, member)
                pipe.zrem(ACCOUNT_KEYS + names.account_id, member)
                pipe.srem(HMAC_KEYS, key_id)
                pipe.delete(last_used_key(key_id))
                pipe.hdel(LAST_USED, key_id)
                await pipe.execute()
        await self.publish("key", key_id)
        return removed

    async def publish(self, kind: str, ident: str) -> None:
        with store_errors():
            await self.redis.publish(EVENTS, orjson.dumps({"kind": kind, "id": ident}))

    # -- signed requests ------------------------------------------------------------------------

    def use_nonce(self, key_id: str, nonce: str, ttl: float) -> Awaitable[bool]:
        """Record a nonce; awaits False when it was already used within its window. (The
        guard's future itself: one frame fewer on every signed request.)"""
        return self._replay_guard.claim(key_id, nonce, ttl)

    def reopen(self) -> None:
        """The store's master changed (a Sentinel failover): the nonce connection moves to the
        new one. (The client's own pool follows by itself.)"""
        self._replay_guard.reopen()

    def close(self) -> None:
        """Close what the store opened besides the client's pool (the nonce connection)."""
        self._replay_guard.close()

    async def hmac_key_count(self) -> int:
        with store_errors():
            return int(await self.redis.scard(HMAC_KEYS))

    async def some_hmac_key_ids(self, count: int) -> list[str]:
        """Up to `count` HMAC key ids, chosen at random (for the master key's check)."""
        with store_errors():
            members = await self.redis.srandmember(HMAC_KEYS, count)
        return [_text(m) for m in cast(list[bytes], members or [])]

    async def hmac_key_ids(self, batch: int) -> AsyncIterator[list[str]]:
        """Every HMAC key id, about `batch` at a time (SSCAN: a key present throughout is
        yielded at least once, rarely twice; one created or deleted meanwhile, maybe)."""
        cursor = 0
        while True:
            with store_errors():
                cursor, members = await self.redis.sscan(HMAC_KEYS, cursor, count=batch)
            if members:
                yield [_text(m) for m in members]
            if not cursor:
                return

    # -- listing (pages in a stable order; memory bounded by the page, never the table) ------

    async def _page(self, index: str, after: str | None,
                    limit: int) -> tuple[list[str], str | None]:
        start = f"({after}" if after else "-"
        with store_errors():
            members = await self.redis.zrangebylex(index, start, "+", start=0, num=limit + 1)
        texts = [_text(m) for m in members]
        more = len(texts) > limit
        texts = texts[:limit]
        ids = [m.split(":", 1)[1] for m in texts]
        return ids, (texts[-1] if more and texts else None)

    async def list_keys(self, *, account_id: str | None, after: str | None,
                        limit: int) -> tuple[list[KeyRecord], str | None]:
        index = ACCOUNT_KEYS + account_id if account_id else KEYS_INDEX
        ids, cursor = await self._page(index, after, limit)
        return await self.get_keys(ids), cursor

    async def list_accounts(self, *, after: str | None,
                            limit: int) -> tuple[list[Account], str | None]:
        ids, cursor = await self._page(ACCOUNTS_INDEX, after, limit)
        with store_errors():
            values = await mget(self.redis, [ACCOUNT + i for i in ids])
        return [Account.from_json(v) for v in values if v is not None], cursor

    async def get_keys(self, ids: Sequence[str]) -> list[KeyRecord]:
        with store_errors():
            values = await mget(self.redis, [KEY + i for i in ids])
        return [KeyRecord.from_json(v) for v in values if v is not None]

    async def count_keys(self, account_id: str) -> int:
        with store_errors():
            return int(await self.redis.zcard(ACCOUNT_KEYS + account_id))

    async def last_used_many(self, ids: Sequence[str]) -> dict[str, float]:
        return await self.last_use.read(ids)

    async def last_used(self, key_id: str) -> float | None:
        return (await self.last_use.read([key_id])).get(key_id)

    # -- audit trail ---------------------------------------------------------------------------

    async def append_audit(self, entry: Mapping[str, Any]) -> str:
        with store_errors():
            entry_id = await self.redis.xadd(AUDIT, {"entry": orjson.dumps(entry)},
                                             maxlen=AUDIT_MAX_ENTRIES, approximate=True)
        return _text(entry_id)

    async def read_audit(self, *, after: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Entries after the stream id `after` ('<ms>-<seq>', or '<ms>' for a time), oldest
        first."""
        with store_errors():
            rows: Any = await self.redis.xrange(AUDIT, min=f"({after}", max="+", count=limit)
        return [(_text(entry_id), orjson.loads(fields[b"entry"])) for entry_id, fields in rows]

    # -- last use ------------------------------------------------------------------------------

    def write_last_used(self, times: Mapping[str, float]) -> AsyncIterator[Flushed]:
        """See LastUseTable.write: bounded, forward-only, yields what each round trip
        confirmed."""
        return self.last_use.write(times)

    async def record_last_used(self, times: Mapping[str, float]) -> dict[str, float]:
        """Merge `times` forward-only; returns the times actually written (a deleted key's
        and an older time are not)."""
        written: dict[str, float] = {}
        async for flushed in self.last_use.write(times):
            written.update(flushed.written)
        return written

    async def migrate(self) -> int:
        """Bring data of an older layout up to this one (see LastUseTable.migrate); cheap when
        there is nothing to do, safe to run from several processes at once."""
        return await self.last_use.migrate()

    # -- the demo ------------------------------------------------------------------------------

    async def demo_key_id(self) -> str | None:
        with store_errors():
            value = await self.redis.get(DEMO_KEY_ID)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def set_demo_key_id(self, key_id: str) -> None:
        with store_errors():
            await self.redis.set(DEMO_KEY_ID, key_id)
