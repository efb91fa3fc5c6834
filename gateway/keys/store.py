"""The key table in Redis (SPEC §7): its layout, and every read and write of it.

Layout (every hot-path read is a single-key GET, so Redis Cluster stays possible):

    gw:secret:{sha256}       -> key id            API-key secret lookup (old secret: expiring)
    gw:key:{id}              -> KeyRecord JSON
    gw:account:{id}          -> Account JSON
    gw:keys                  zset index of every key
    gw:accounts              zset index of every account
    gw:account-keys:{id}     zset index of one account's keys
                             (index members are "<created ms, 13 digits>:<id>", all scored 0, so
                             they sort by creation then id: a stable order, and the last member
                             of a page is the cursor of the next)
    gw:hmac-keys             set of the HMAC key ids (is a master key needed at start-up?)
    gw:nonce:{key id}:{h}    a signed request's nonce, remembered while the signature could
                             still be accepted (SET NX PX: one round trip, on every instance)
    gw:last-used             hash key id -> epoch seconds (forward-only, batched)
    gw:audit                 stream of management changes (who, what, when, which ids)
    gw:events                pub/sub channel of invalidations: {"kind": "key"|"account", "id"}
    gw:demo-key-id           the key `gateway run --demo` created on its first start
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import orjson

from gateway.keys.model import HMAC_KEY, Account, KeyRecord
from gateway.keys.nonces import NONCE, ReplayGuard  # noqa: F401 - part of the layout above
from gateway.store.client import Redis, store_errors

SECRET = "gw:secret:"  # noqa: S105 - a key prefix, not a password
KEY = "gw:key:"
ACCOUNT = "gw:account:"
KEYS_INDEX = "gw:keys"
ACCOUNTS_INDEX = "gw:accounts"
ACCOUNT_KEYS = "gw:account-keys:"
LAST_USED = "gw:last-used"
EVENTS = "gw:events"
AUDIT = "gw:audit"
HMAC_KEYS = "gw:hmac-keys"
DEMO_KEY_ID = "gw:demo-key-id"
AUDIT_MAX_ENTRIES = 1_000_000
_CURSOR = re.compile(r"^\d{13}:[A-Za-z0-9_]{1,64}$", re.ASCII)

# Forward-only merge of last-use times: several workers flush, the latest time wins.
_RECORD_LAST_USED = """
for i = 1, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or tonumber(current) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


def ms(timestamp: float) -> int:
    return int(timestamp * 1000)


def index_member(created_at: float, ident: str) -> str:
    return f"{ms(created_at):013d}:{ident}"


def is_cursor(cursor: str) -> bool:
    return _CURSOR.fullmatch(cursor) is not None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class KeyStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._record_last_used = redis.register_script(_RECORD_LAST_USED)
        self._replay_guard = ReplayGuard(redis)

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

    # -- writes (management; each publishes its invalidation) ----------------------------------

    async def put_account(self, account: Account) -> None:
        with store_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(ACCOUNT + account.id, account.to_json())
                pipe.zadd(ACCOUNTS_INDEX, {index_member(account.created_at, account.id): 0})
                await pipe.execute()
        await self.publish("account", account.id)

    async def create_key(self, key: KeyRecord) -> None:
        with store_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(KEY + key.id, key.to_json())
                if key.secret_hash:
                    pipe.set(SECRET + key.secret_hash, key.id)
                member = index_member(key.created_at, key.id)
                pipe.zadd(KEYS_INDEX, {member: 0})
                pipe.zadd(ACCOUNT_KEYS + key.account_id, {member: 0})
                if key.type == HMAC_KEY:
                    pipe.sadd(HMAC_KEYS, key.id)
                await pipe.execute()

    async def replace_key(self, old: KeyRecord, new: KeyRecord) -> None:
        """Store `new` in place of `old`, moving secret pointers when the secret changed."""
        with store_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(KEY + new.id, new.to_json())
                live_hashes = {new.secret_hash, new.previous_hash}
                for stale in (old.secret_hash, old.previous_hash):
                    if stale and stale not in live_hashes:
                        pipe.delete(SECRET + stale)
                if new.secret_hash:
                    pipe.set(SECRET + new.secret_hash, new.id)
                if new.previous_hash and new.previous_until is not None:
                    # The old secret's pointer disappears by itself when its grace ends.
                    pipe.set(SECRET + new.previous_hash, new.id,
                             pxat=max(ms(new.previous_until), 1))
                await pipe.execute()
        await self.publish("key", new.id)

    async def delete_key(self, key: KeyRecord) -> None:
        with store_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(KEY + key.id)
                for secret_hash in (key.secret_hash, key.previous_hash):
                    if secret_hash:
                        pipe.delete(SECRET + secret_hash)
                member = index_member(key.created_at, key.id)
                pipe.zrem(KEYS_INDEX, member)
                pipe.zrem(ACCOUNT_KEYS + key.account_id, member)
                pipe.srem(HMAC_KEYS, key.id)
                pipe.hdel(LAST_USED, key.id)
                await pipe.execute()
        await self.publish("key", key.id)

    async def delete_account(self, account: Account) -> None:
        with store_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(ACCOUNT + account.id, ACCOUNT_KEYS + account.id)
                pipe.zrem(ACCOUNTS_INDEX, index_member(account.created_at, account.id))
                await pipe.execute()
        await self.publish("account", account.id)

    async def publish(self, kind: str, ident: str) -> None:
        with store_errors():
            await self.redis.publish(EVENTS, orjson.dumps({"kind": kind, "id": ident}))

    # -- signed requests ------------------------------------------------------------------------

    def use_nonce(self, key_id: str, nonce: str, ttl: float) -> Awaitable[bool]:
        """Record a nonce; awaits False when it was already used within its window. (The
        guard's future itself: one frame fewer on every signed request.)"""
        return self._replay_guard.claim(key_id, nonce, ttl)

    def close(self) -> None:
        """Close what the store opened besides the client's pool (the nonce connection)."""
        self._replay_guard.close()

    async def hmac_key_count(self) -> int:
        with store_errors():
            return int(await self.redis.scard(HMAC_KEYS))

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
        if not ids:
            return [], cursor
        with store_errors():
            values = await self.redis.mget([ACCOUNT + i for i in ids])
        return [Account.from_json(v) for v in values if v is not None], cursor

    async def get_keys(self, ids: Sequence[str]) -> list[KeyRecord]:
        if not ids:
            return []
        with store_errors():
            values = await self.redis.mget([KEY + i for i in ids])
        return [KeyRecord.from_json(v) for v in values if v is not None]

    async def count_keys(self, account_id: str) -> int:
        with store_errors():
            return int(await self.redis.zcard(ACCOUNT_KEYS + account_id))

    async def last_used_many(self, ids: Sequence[str]) -> dict[str, float]:
        if not ids:
            return {}
        with store_errors():
            values = await self.redis.hmget(LAST_USED, list(ids))
        return {i: float(v) for i, v in zip(ids, values, strict=True) if v is not None}

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

    async def record_last_used(self, times: Mapping[str, float]) -> None:
        if not times:
            return
        args: list[str] = []
        for key_id, when in times.items():
            args += [key_id, f"{when:.3f}"]
        with store_errors():
            await self._record_last_used(keys=[LAST_USED], args=args)

    async def last_used(self, key_id: str) -> float | None:
        with store_errors():
            value = await self.redis.hget(LAST_USED, key_id)
        return float(value) if value is not None else None

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
