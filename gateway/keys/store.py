"""The key table in Redis (SPEC §7): its layout, and every read and write of it.

Layout (every hot-path read is a single-key GET, so Redis Cluster stays possible):

    gw:secret:{sha256}       -> key id            API-key secret lookup (old secret: expiring)
    gw:key:{id}              -> KeyRecord JSON
    gw:account:{id}          -> Account JSON
    gw:keys                  zset of key ids, scored by creation (ms): stable listing order
    gw:accounts              zset of account ids, scored by creation (ms)
    gw:account-keys:{id}     set of the account's key ids
    gw:last-used             hash key id -> epoch seconds (forward-only, batched)
    gw:events                pub/sub channel of invalidations: {"kind": "key"|"account", "id"}
    gw:demo-key-id           the key `gateway run --demo` created on its first start
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gateway.keys.model import Account, KeyRecord
from gateway.store.client import Redis, store_errors

SECRET = "gw:secret:"  # noqa: S105 - a key prefix, not a password
KEY = "gw:key:"
ACCOUNT = "gw:account:"
KEYS_INDEX = "gw:keys"
ACCOUNTS_INDEX = "gw:accounts"
ACCOUNT_KEYS = "gw:account-keys:"
LAST_USED = "gw:last-used"
EVENTS = "gw:events"
DEMO_KEY_ID = "gw:demo-key-id"

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


def _ms(timestamp: float) -> int:
    return int(timestamp * 1000)


class KeyStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._record_last_used = redis.register_script(_RECORD_LAST_USED)

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
                pipe.zadd(ACCOUNTS_INDEX, {account.id: _ms(account.created_at)}, nx=True)
                await pipe.execute()
        await self.publish("account", account.id)

    async def create_key(self, key: KeyRecord) -> None:
        with store_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(KEY + key.id, key.to_json())
                if key.secret_hash:
                    pipe.set(SECRET + key.secret_hash, key.id)
                pipe.zadd(KEYS_INDEX, {key.id: _ms(key.created_at)})
                pipe.sadd(ACCOUNT_KEYS + key.account_id, key.id)
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
                             pxat=max(_ms(new.previous_until), 1))
                await pipe.execute()
        await self.publish("key", new.id)

    async def delete_key(self, key: KeyRecord) -> None:
        with store_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(KEY + key.id)
                for secret_hash in (key.secret_hash, key.previous_hash):
                    if secret_hash:
                        pipe.delete(SECRET + secret_hash)
                pipe.zrem(KEYS_INDEX, key.id)
                pipe.srem(ACCOUNT_KEYS + key.account_id, key.id)
                pipe.hdel(LAST_USED, key.id)
                await pipe.execute()
        await self.publish("key", key.id)

    async def publish(self, kind: str, ident: str) -> None:
        with store_errors():
            await self.redis.publish(EVENTS, orjson.dumps({"kind": kind, "id": ident}))

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
