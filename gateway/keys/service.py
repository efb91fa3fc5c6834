"""Lifecycle operations on accounts and keys (SPEC §1, §8): one service layer under the CLI,
the admin HTTP API and the admin web page. Validation and business rules live here; the Redis
layout lives in `store.py`; every change publishes its invalidation through the store.

Every change to a record is atomic (SPEC §7): it is computed from the record as read and lands
only if the record still holds those bytes (a compare-and-set). A lost race is read again and
the change applied again to what won; a record deleted meanwhile stays deleted (NotFound). So
no concurrent edit can undo a delete, a reissue or a disable, whoever answers first.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth import apikey
from gateway.config import is_scope_name
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.keys.limits import LimitChanges, limit_fields
from gateway.keys.model import (
    API_KEY,
    HMAC_KEY,
    KEY_TYPES,
    UNSET,
    Account,
    KeyRecord,
    _Unset,
    iso,
    new_account_id,
    new_key_id,
)
from gateway.keys.secrets import SecretBox
from gateway.keys.store import KeyStore, Swap, is_cursor, ms
from gateway.keys.text import check_text
from gateway.limits import readout
from gateway.limits.applied import NO_LIMITS, applied_limits

MAX_NAME = 200
MAX_DESCRIPTION = 1000
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_BATCH = 1000
# Compare-and-set attempts of one change before it gives up: each lost attempt means another
# change landed, so only a record under a storm of edits ever gets near this.
MAX_ATTEMPTS = 50
_last_created = 0.0  # see KeyService._creation_time


def new_hmac_secret() -> str:
    """SPEC §2: 32 random bytes, base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


class KeyService:
    """`actor` names who acts in the audit trail: `cli`, or the admin token's label."""

    def __init__(self, store: KeyStore, *, default_scopes: Iterable[str] = (),
                 actor: str = "cli", clock: Callable[[], float] = time.time,
                 secret_box: SecretBox | None = None, accept_imported: bool = False) -> None:
        self.store = store
        # keys.accept_imported of the config in use: imports say when their secrets will not
        # authenticate until it is set.
        self.accept_imported = accept_imported
        self.default_scopes = tuple(default_scopes)
        self.actor = actor
        self.clock = clock
        self.secret_box = secret_box

    def _creation_time(self) -> float:
        """Now, or just past the last record this process created when that was within the
        same second: listings page in creation order (index members are the
        creation millisecond, then the id), and records made within one millisecond would
        otherwise be ordered by their random ids. A clock far from the last stamp (a test's
        fixed clock) is taken as it is."""
        global _last_created
        now = self.clock()
        last = _last_created
        if ms(now) <= ms(last) and last < now + 1.0:
            now = (ms(last) + 1.5) / 1000  # half a millisecond clear of float rounding
        _last_created = now
        return now

    async def _audit(self, action: str, ids: Sequence[str], **details: Any) -> None:
        # Details are chosen by each caller below and never include a secret or its hash.
        await self.store.append_audit({"at": iso(self.clock()), "actor": self.actor,
                                       "action": action, "ids": list(ids), **details})

    # -- accounts ------------------------------------------------------------------------------

    async def create_account(self, name: str, *, api_access: bool = True,
                             enabled: bool = True) -> Account:
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidRequest("name", f"must be 1 to {MAX_NAME} characters")
        check_text("name", name)  # no terminal escapes in what the CLI prints (keys/text.py)
        account = Account(id=new_account_id(), name=name, enabled=enabled,
                          api_access=api_access, created_at=self._creation_time())
        await self.store.put_account(account)
        await self._audit("account.create", [account.id], name=name, enabled=enabled,
                          api_access=api_access)
        return account

    async def get_account(self, account_id: str) -> Account:
        account = await self.store.get_account(account_id)
        if account is None:
            raise NotFound(f"no account with id {account_id!r}")
        return account

    async def update_account(self, account_id: str, *, enabled: bool | None = None,
                             api_access: bool | None = None,
                             limits: LimitChanges | None = None) -> Account:
        """`limits`: the rate, burst and quota to set (None in one: removed), SPEC §11."""
        checked = limit_fields(limits) if limits else {}

        def change(account: Account) -> Account:
            return account.with_changes(
                enabled=account.enabled if enabled is None else enabled,
                api_access=account.api_access if api_access is None else api_access,
                **checked,
            )

        for attempt in range(MAX_ATTEMPTS):
            found = await self.store.read_account(account_id)
            if found is None:
                raise NotFound(f"no account with id {account_id!r}")
            account, raw = found
            changed = change(account)
            outcome = await self.store.swap_account(raw, changed)
            if outcome is Swap.DONE:
                await self._audit("account.update", [account_id],
                                  **{k: v for k, v in (("enabled", enabled),
                                                       ("api_access", api_access))
                                     if v is not None}, **checked)
                return changed
            if outcome is Swap.GONE:
                raise NotFound(f"no account with id {account_id!r}")
            await _back_off(attempt)
        raise _kept_losing("account", account_id)

    async def account_view(self, account: Account) -> dict[str, Any]:
        return {**account.public(), "key_count": await self.store.count_keys(account.id)}

    async def list_accounts(self, *, cursor: str | None = None,
                            limit: int = DEFAULT_PAGE) -> Page:
        accounts, next_cursor = await self.store.list_accounts(after=_cursor(cursor),
                                                               limit=_limit(limit))
        return Page([await self.account_view(a) for a in accounts], next_cursor)

    async def delete_account(self, account_id: str, *, delete_keys: bool = False) -> list[str]:
        """Delete an account; refused while it has keys unless `delete_keys`. Returns the ids of
        the keys deleted with it."""
        account = await self.get_account(account_id)
        count = await self.store.count_keys(account_id)
        if count and not delete_keys:
            raise Conflict(f"account {account_id!r} still has {count} key(s); delete them "
                           "first or ask for them to be deleted with it")
        deleted = await self._delete_keys_of(account_id) if delete_keys else []
        removed = await self.store.delete_account(account)
        # A key created while this ran, whose creator saw the account still there, is deleted
        # now: creators check the account again after writing the key (create_key), so once
        # the record is gone, either the creator removes its key or this sweep does.
        deleted += await self._delete_keys_of(account_id)
        if removed is None:
            if deleted:
                await self._audit("key.delete", deleted)
            raise NotFound(f"no account with id {account_id!r}")
        await self.store.forget_account_keys(account_id)
        await self._audit("account.delete", [account_id, *deleted])
        return deleted

    async def _delete_keys_of(self, account_id: str) -> list[str]:
        deleted: list[str] = []
        cursor: str | None = None
        while True:
            keys, cursor = await self.store.list_keys(account_id=account_id, after=cursor,
                                                      limit=MAX_BATCH)
            for key in keys:
                if await self.store.delete_key(key) is not None:
                    deleted.append(key.id)
            if cursor is None:
                return deleted

    # -- keys ----------------------------------------------------------------------------------

    async def create_key(self, *, account_id: str, key_type: str = API_KEY,
                         scopes: Iterable[str] | None = None, expires_at: float | None = None,
                         description: str = "", limits: LimitChanges | None = None
                         ) -> tuple[KeyRecord, str]:
        """Create a key; return it and its secret, which is never available again."""
        checked = limit_fields(limits) if limits else {}
        if key_type not in KEY_TYPES:
            raise InvalidRequest("type", f"must be one of {', '.join(KEY_TYPES)}")
        if key_type == HMAC_KEY:
            if expires_at is None:
                raise InvalidRequest("expires_at", "HMAC keys need an expiry")
            self._box()
        account = await self.get_account(account_id)
        if not account.api_access:
            raise Conflict(f"account {account_id!r} does not hold the api_access right; "
                           "grant it before creating keys")
        chosen = self._scopes(scopes)
        now = self._creation_time()
        self._check_expiry(expires_at, now)
        key_id = new_key_id(key_type)
        if key_type == HMAC_KEY:
            secret = new_hmac_secret()
            material: dict[str, Any] = {"secret_tail": secret[-6:],
                                        "extra": {"secret": self._box().seal(key_id, secret)}}
        else:
            secret = apikey.new_secret()
            material = {"secret_hash": apikey.hash_secret(secret),
                        "secret_tail": apikey.tail(secret)}
        key = KeyRecord(id=key_id, type=key_type, account_id=account.id, scopes=chosen,
                        created_at=now, expires_at=expires_at,
                        description=self._description(description), **material, **checked)
        stands = await self.store.create_key(key)
        if not stands or await self.store.get_account(account.id) is None:
            # The account was deleted meanwhile (or the key with it): a key of no account must
            # not stay behind. See delete_account.
            await self.store.delete_key(key)
            raise NotFound(f"no account with id {account_id!r}")
        await self._audit("key.create", [key.id], account_id=account.id, type=key_type,
                          scopes=list(chosen), expires_at=iso(expires_at), **checked)
        return key, secret

    async def get_key(self, key_id: str) -> KeyRecord:
        key = await self.store.get_key(key_id)
        if key is None:
            raise NotFound(f"no key with id {key_id!r}")
        return key

    async def get_keys(self, key_ids: Sequence[str]) -> list[KeyRecord]:
        """The keys that exist among `key_ids` (one round trip), in the order asked."""
        found = {k.id: k for k in await self.store.get_keys(list(dict.fromkeys(key_ids)))}
        return [found[i] for i in dict.fromkeys(key_ids) if i in found]

    async def last_used(self, key_id: str) -> float | None:
        return await self.store.last_used(key_id)

    async def key_view(self, key: KeyRecord) -> dict[str, Any]:
        """A key as shown alone: with its quotas' (and its account's) used and remaining counts
        (SPEC §11). Listings leave those out: a Redis read a quota, per key."""
        view = key.public(await self.store.last_used(key.id))
        account = await self.store.get_account(key.account_id)
        limits = applied_limits(key.id, key, key.account_id, account or NO_LIMITS, "",
                                NO_LIMITS)
        view["quotas"] = await readout.quota_status(self.store.redis, limits, self.clock())
        return view

    async def usage(self, key_id: str, *, days: int = readout.USAGE_DAYS
                    ) -> list[dict[str, Any]]:
        """The key's requests and refusals per minute, the last `days` days (SPEC §11)."""
        await self.get_key(key_id)
        return await readout.usage(self.store.redis, key_id, days=days, now=self.clock())

    async def list_keys(self, *, account_id: str | None = None, cursor: str | None = None,
                        limit: int = DEFAULT_PAGE) -> Page:
        if account_id is not None:
            await self.get_account(account_id)
        keys, next_cursor = await self.store.list_keys(account_id=account_id,
                                                       after=_cursor(cursor),
                                                       limit=_limit(limit))
        used = await self.store.last_used_many([k.id for k in keys])
        return Page([k.public(used.get(k.id)) for k in keys], next_cursor)

    async def iterate_keys(self, *, account_id: str | None = None,
                           page_size: int = DEFAULT_PAGE) -> AsyncIterator[dict[str, Any]]:
        """Every key, one page in memory at a time."""
        cursor: str | None = None
        while True:
            page = await self.list_keys(account_id=account_id, cursor=cursor, limit=page_size)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def update_key(self, key_id: str, *, expires_at: float | _Unset | None = UNSET,
                         description: str | _Unset = UNSET,
                         limits: LimitChanges | None = None) -> KeyRecord:
        """Only the expiry, the description and the limits of a key can change (SPEC §1,
        §11), for both types. An HMAC key's expiry can move but not go: it needs one (SPEC §1).
        Its description can change too, as an API key's can: free text that grants nothing
        (issue 17, item 10). Limits are policy, not identity (issue 20)."""
        changes: dict[str, Any] = dict(limit_fields(limits)) if limits else {}
        if expires_at is not UNSET:
            self._check_expiry(expires_at, self.clock())
            changes["expires_at"] = expires_at
        if description is not UNSET:
            changes["description"] = self._description(description)
        if not changes:
            raise InvalidRequest("key", "nothing to change: give an expiry, a description, "
                                        "a rate or a quota")

        def change(key: KeyRecord) -> KeyRecord:
            # On the record as read: the type is known only there, and a key left without an
            # expiry by an older version gets one with its next change.
            if key.type == HMAC_KEY and changes.get("expires_at", key.expires_at) is None:
                why = ("it can be moved but not removed" if "expires_at" in changes else
                       "this one has none: give one with this change")
                raise InvalidRequest("expires_at", f"HMAC keys need an expiry; {why}")
            return key.with_changes(**changes)

        _, changed = await self._change_key(key_id, change)
        details = {name: iso(value) if name == "expires_at" else value
                   for name, value in changes.items()}
        await self._audit("key.update", [key_id], **details)
        return changed

    async def _change_key(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]
                          ) -> tuple[KeyRecord, KeyRecord]:
        """Apply `change` to the key as stored, atomically (compare-and-set, re-applied to the
        winner of a lost race). `change` may refuse by raising. Returns (before, after)."""
        for attempt in range(MAX_ATTEMPTS):
            found = await self.store.read_key(key_id)
            if found is None:
                raise NotFound(f"no key with id {key_id!r}")
            key, raw = found
            changed = change(key)
            outcome = await self.store.swap_key(raw, key, changed)
            if outcome is Swap.DONE:
                return key, changed
            if outcome is Swap.GONE:
                raise NotFound(f"no key with id {key_id!r}")
            await _back_off(attempt)
        raise _kept_losing("key", key_id)

    async def set_expiry(self, key_id: str, expires_at: float | None) -> KeyRecord:
        return await self.update_key(key_id, expires_at=expires_at)

    async def delete_key(self, key_id: str) -> KeyRecord:
        return (await self.delete_keys([key_id]))[0]

    async def delete_keys(self, key_ids: Sequence[str]) -> list[KeyRecord]:
        """Delete several keys: all of them, or none when any id is unknown."""
        ids = list(dict.fromkeys(key_ids))
        if not ids:
            raise InvalidRequest("ids", "give at least one key id")
        if len(ids) > MAX_BATCH:
            raise InvalidRequest("ids", f"at most {MAX_BATCH} keys at once")
        keys = await self.store.get_keys(ids)
        missing = sorted(set(ids) - {k.id for k in keys})
        if missing:
            # "Already gone" must come from a master that keeps what it says: one cut off by
            # a failover may have lost the key that its successor still holds.
            await self.store.confirm_read()
            raise NotFound("no key with id " + ", ".join(repr(m) for m in missing))
        # Each record as it was when removed (a reissue may have changed it since the read).
        removed = [r for r in [await self.store.delete_key(key.id) for key in keys]
                   if r is not None]
        if not removed:
            # Every one of them was deleted by a concurrent call: that call answers for it.
            raise NotFound("no key with id " + ", ".join(repr(i) for i in ids))
        await self._audit("key.delete", [r.id for r in removed])
        return removed

    async def reissue_key(self, key_id: str, *, grace: float = 0.0) -> tuple[KeyRecord, str]:
        """A new secret under the same id, scopes and expiry. The old secret keeps working for
        `grace` seconds, never past the key's own expiry."""
        if grace < 0:
            raise InvalidRequest("grace", "must not be negative")
        now = self.clock()
        # A key's type never changes: the new secret is made once, whatever races follow.
        is_hmac = (await self.get_key(key_id)).type == HMAC_KEY
        secret = new_hmac_secret() if is_hmac else apikey.new_secret()
        sealed = self._box().seal(key_id, secret) if is_hmac else ""

        def change(key: KeyRecord) -> KeyRecord:
            if key.expires_at is not None and key.expires_at <= now:
                raise Conflict(f"key {key_id!r} has expired; extend its expiry first, or "
                               "create a new key")
            previous_until = now + grace
            if key.expires_at is not None:
                previous_until = min(previous_until, key.expires_at)
            keep_old = grace > 0 and previous_until > now
            if key.type == HMAC_KEY:
                extra = {"secret": sealed}
                if keep_old:
                    extra["previous_secret"] = key.extra["secret"]
                return key.with_changes(secret_tail=secret[-6:], extra=extra,
                                        previous_until=previous_until if keep_old else None)
            return key.with_changes(
                secret_hash=apikey.hash_secret(secret), secret_tail=apikey.tail(secret),
                previous_hash=key.secret_hash if keep_old else None,
                previous_until=previous_until if keep_old else None,
            )

        _, changed = await self._change_key(key_id, change)
        await self._audit("key.reissue", [key_id], grace_seconds=grace,
                          old_secret_valid_until=iso(changed.previous_until))
        return changed, secret

    # -- audit ---------------------------------------------------------------------------------

    async def audit(self, *, since: float | None = None, cursor: str | None = None,
                    limit: int = DEFAULT_PAGE) -> Page:
        """Audit entries oldest first, after `cursor` (an entry id) or from `since`."""
        if cursor is not None:
            # A stream id is two unsigned 64-bit numbers; Redis refuses anything larger.
            if not _AUDIT_ID.fullmatch(cursor) or any(int(part) >= 2**64
                                                  for part in cursor.split("-")):
                raise InvalidRequest("cursor", "not a cursor from a previous page")
            after = cursor
        else:
            since_ms = min(max(int((since or 0) * 1000), 0), 2**63)
            after = f"{since_ms - 1}-{2**64 - 1}" if since_ms else "0-0"
        rows = await self.store.read_audit(after=after, limit=_limit(limit))
        items = [{"id": entry_id, **entry} for entry_id, entry in rows]
        return Page(items, rows[-1][0] if len(rows) == _limit(limit) else None)

    def _box(self) -> SecretBox:
        if self.secret_box is None:
            raise Conflict("HMAC keys need a master key to encrypt their secrets: set "
                           "GATEWAY_MASTER_KEY (32 random bytes, base64)")
        return self.secret_box

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
        return check_text("description", description)


_AUDIT_ID = re.compile(r"^\d{1,20}-\d{1,20}$", re.ASCII)  # ASCII: int() reads other digits too


async def _back_off(attempt: int) -> None:
    """A moment before reading again after a lost race, growing and jittered, so that callers
    racing on one record do not keep colliding in step."""
    await asyncio.sleep(secrets.randbelow(1000 * min(attempt + 1, 20)) / 1_000_000)


def _kept_losing(kind: str, ident: str) -> Conflict:
    return Conflict(f"{kind} {ident!r} was changed by concurrent calls {MAX_ATTEMPTS} times "
                    "while this change was being applied; try again")


def _cursor(cursor: str | None) -> str | None:
    if cursor is not None and not is_cursor(cursor):
        raise InvalidRequest("cursor", "not a cursor from a previous page")
    return cursor


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest("limit", f"must be between 1 and {MAX_PAGE}")
    return limit
