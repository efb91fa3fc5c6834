"""Lifecycle operations on accounts and keys (SPEC §1, §8): one service layer under the CLI,
the admin HTTP API and the admin web page. Validation and business rules live here; the Redis
layout lives in `store.py`; every change publishes its invalidation through the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gateway.auth import apikey
from gateway.config import is_scope_name
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.keys.model import (
    API_KEY,
    KEY_TYPES,
    Account,
    KeyRecord,
    new_account_id,
    new_key_id,
)
from gateway.keys.store import KeyStore

MAX_NAME = 200
MAX_DESCRIPTION = 1000


class KeyService:
    def __init__(self, store: KeyStore, *, default_scopes: Iterable[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.default_scopes = tuple(default_scopes)
        self.clock = clock

    # -- accounts ------------------------------------------------------------------------------

    async def create_account(self, name: str, *, api_access: bool = True,
                             enabled: bool = True) -> Account:
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidRequest("name", f"must be 1 to {MAX_NAME} characters")
        account = Account(id=new_account_id(), name=name, enabled=enabled,
                          api_access=api_access, created_at=self.clock())
        await self.store.put_account(account)
        return account

    async def get_account(self, account_id: str) -> Account:
        account = await self.store.get_account(account_id)
        if account is None:
            raise NotFound(f"no account with id {account_id!r}")
        return account

    async def update_account(self, account_id: str, *, enabled: bool | None = None,
                             api_access: bool | None = None) -> Account:
        account = await self.get_account(account_id)
        changed = Account(
            id=account.id, name=account.name, created_at=account.created_at,
            enabled=account.enabled if enabled is None else enabled,
            api_access=account.api_access if api_access is None else api_access,
        )
        await self.store.put_account(changed)
        return changed

    # -- keys ----------------------------------------------------------------------------------

    async def create_key(self, *, account_id: str, key_type: str = API_KEY,
                         scopes: Iterable[str] | None = None, expires_at: float | None = None,
                         description: str = "") -> tuple[KeyRecord, str]:
        """Create a key; return it and its secret, which is never available again."""
        if key_type not in KEY_TYPES:
            raise InvalidRequest("type", f"must be one of {', '.join(KEY_TYPES)}")
        if key_type != API_KEY:
            raise InvalidRequest("type", "HMAC keys are not available in this version yet")
        account = await self.get_account(account_id)
        if not account.api_access:
            raise Conflict(f"account {account_id!r} does not hold the api_access right; "
                           "grant it before creating keys")
        chosen = self._scopes(scopes)
        now = self.clock()
        self._check_expiry(expires_at, now)
        secret = apikey.new_secret()
        key = KeyRecord(
            id=new_key_id(key_type), type=key_type, account_id=account.id, scopes=chosen,
            created_at=now, expires_at=expires_at, description=self._description(description),
            secret_hash=apikey.hash_secret(secret), secret_tail=apikey.tail(secret),
        )
        await self.store.create_key(key)
        return key, secret

    async def get_key(self, key_id: str) -> KeyRecord:
        key = await self.store.get_key(key_id)
        if key is None:
            raise NotFound(f"no key with id {key_id!r}")
        return key

    async def last_used(self, key_id: str) -> float | None:
        return await self.store.last_used(key_id)

    async def set_expiry(self, key_id: str, expires_at: float | None) -> KeyRecord:
        key = await self.get_key(key_id)
        self._check_expiry(expires_at, self.clock())
        changed = key.with_changes(expires_at=expires_at)
        await self.store.replace_key(key, changed)
        return changed

    async def delete_key(self, key_id: str) -> KeyRecord:
        key = await self.get_key(key_id)
        await self.store.delete_key(key)
        return key

    async def reissue_key(self, key_id: str, *, grace: float = 0.0) -> tuple[KeyRecord, str]:
        """A new secret under the same id, scopes and expiry. The old secret keeps working for
        `grace` seconds, never past the key's own expiry."""
        if grace < 0:
            raise InvalidRequest("grace", "must not be negative")
        key = await self.get_key(key_id)
        now = self.clock()
        secret = apikey.new_secret()
        previous_until = now + grace
        if key.expires_at is not None:
            previous_until = min(previous_until, key.expires_at)
        keep_old = grace > 0 and previous_until > now
        changed = key.with_changes(
            secret_hash=apikey.hash_secret(secret), secret_tail=apikey.tail(secret),
            previous_hash=key.secret_hash if keep_old else None,
            previous_until=previous_until if keep_old else None,
        )
        await self.store.replace_key(key, changed)
        return changed, secret

    # -- validation ----------------------------------------------------------------------------

    def _scopes(self, scopes: Iterable[str] | None) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(scopes or ())) or self.default_scopes
        for scope in chosen:
            if not is_scope_name(scope):
                raise InvalidRequest("scopes", f"{scope!r} is not a scope name such as "
                                     "yc.ai.vision.execute or yc.ai.*")
        return chosen

    @staticmethod
    def _check_expiry(expires_at: float | None, now: float) -> None:
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("expires_at", "must be in the future")

    @staticmethod
    def _description(description: str) -> str:
        if len(description) > MAX_DESCRIPTION:
            raise InvalidRequest("description", f"must be at most {MAX_DESCRIPTION} characters")
        return description
