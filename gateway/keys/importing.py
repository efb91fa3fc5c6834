"""Bulk import of existing API keys (issue 19): JSON lines in, records of the key table out.

One line per key:

    {"account": "name or acc_ id", "secret": "plaintext" | "secret_sha256": "64 hex digits",
     "scopes": ["..."], "expires_at": "ISO 8601" | epoch seconds | null, "description": "..."}

`parse_lines` is pure: every line is checked before anything is written, and each problem
names its line. `import_keys` writes what parsed, in pipelined batches, straight into the
layout of store.py (index members, then records with SET NX, then secret pointers with SET NX,
the order `KeyStore.create_key` keeps), so an import of a million keys is a few thousand
round trips, not millions. It is idempotent: a secret whose record already holds the same
account, scopes and expiry is "unchanged"; one held by a different record is "conflicting"
and left as it is.

A plaintext secret is hashed as the proxy hashes a presented one (`apikey.hash_secret`) and
never stored; it need not have the `gwk_` format, but must be what a client can send in an
Authorization header: visible ASCII.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from redis.asyncio.cluster import RedisCluster

from gateway.auth import apikey
from gateway.config import is_scope_name
from gateway.errors import InvalidRequest, StoreError, StoreUnavailable
from gateway.keys.layout import mget
from gateway.keys.model import (
    API_KEY,
    API_KEY_ID_PREFIX,
    BASE62,
    Account,
    KeyRecord,
    new_account_id,
)
from gateway.keys.store import (
    ACCOUNT,
    ACCOUNT_KEYS,
    ACCOUNTS_INDEX,
    KEY,
    KEYS_INDEX,
    SECRET,
    KeyStore,
    index_member,
)
from gateway.keys.text import check_text
from gateway.store.client import Redis, slot_groups, store_errors

FIELDS = frozenset({"account", "secret", "secret_sha256", "scopes", "expires_at",
                    "description"})
MAX_NAME = 200
MAX_DESCRIPTION = 1000
MAX_REPORTED = 100  # problems listed by line; the rest are counted
BATCH = 2000  # keys per round trip of a write
_ACCOUNT_ID = re.compile(r"^acc_[0-9A-Za-z]{16}$", re.ASCII)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$", re.ASCII)
_VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$", re.ASCII)


@dataclass(frozen=True, slots=True)
class ImportLine:
    line: int
    account: str
    secret_hash: str
    secret_tail: str
    scopes: tuple[str, ...]
    expires_at: float | None
    description: str
    # Not a gwk_ secret (or only its hash is known): it authenticates only with
    # keys.accept_imported on.
    foreign: bool = True


def _fast_id() -> str:
    """`new_key_id(API_KEY)` from one urandom call (a million ids in about a second, where
    20 calls of secrets.choice per id take twenty): bytes below 248 map evenly onto base62."""
    while True:
        chars = [BASE62[b % 62] for b in os.urandom(32) if b < 248]
        if len(chars) >= 20:
            return API_KEY_ID_PREFIX + "".join(chars[:20])


async def _set_new(redis: Redis, pairs: Sequence[tuple[str, bytes | str]], *,
                   confirm: tuple[int, int] | None = None) -> list[bool]:
    """SET NX of each pair, in as few commands as can be: one MSETNX per cluster slot (all of
    one Redis is one slot group); a group where any name exists already falls back to one
    SET NX per name, so each answer says whether that name was written. `confirm` (replicas,
    ms): a WAIT on the same connection, as KeyStore's confirmed writes (StoreUnavailable when
    fewer replicas hold them)."""
    if not pairs:
        return []
    groups = slot_groups(redis, [name for name, _ in pairs])
    async with redis.pipeline(transaction=False) as pipe:
        for group in groups:
            pipe.execute_command("MSETNX", *(part for i in group for part in pairs[i]))
        if confirm is not None and not isinstance(redis, RedisCluster):
            pipe.execute_command("WAIT", *confirm)
        replies = await pipe.execute()
    if confirm is not None and not isinstance(redis, RedisCluster):
        acked = int(replies.pop())
        if acked < confirm[0]:
            raise StoreUnavailable(f"key store unavailable: the import is not confirmed on "
                                   f"{confirm[0]} replica(s) ({acked}); run it again")
    written = [True] * len(pairs)
    retry = [i for group, reply in zip(groups, replies, strict=True) if not reply
             for i in group]
    if retry:
        async with redis.pipeline(transaction=False) as pipe:
            for i in retry:
                pipe.set(pairs[i][0], pairs[i][1], nx=True)
            for i, ok in zip(retry, await pipe.execute(), strict=True):
                written[i] = bool(ok)
    return written


class BadImport(InvalidRequest):
    """Lines that cannot be imported; nothing was written. `problems` name their lines."""

    def __init__(self, problems: Sequence[str], total: int | None = None) -> None:
        self.problems = list(problems[:MAX_REPORTED])
        self.total = total if total is not None else len(problems)
        more = self.total - len(self.problems)
        text = "\n".join(self.problems) + (f"\n... and {more} more" if more > 0 else "")
        super().__init__("lines", f"{self.total} line(s) cannot be imported, nothing was "
                         f"written:\n{text}")


@dataclass(slots=True)
class ImportReport:
    created: int = 0
    unchanged: int = 0
    conflicting: int = 0
    accounts_created: int = 0
    conflicts: list[str] = field(default_factory=list)  # the first MAX_REPORTED, by line

    def public(self) -> dict[str, Any]:
        return {"created": self.created, "unchanged": self.unchanged,
                "conflicting": self.conflicting, "accounts_created": self.accounts_created,
                "conflicts": self.conflicts}

    def _conflict(self, line: int, reason: str) -> None:
        self.conflicting += 1
        if len(self.conflicts) < MAX_REPORTED:
            self.conflicts.append(f"line {line}: {reason}")


# -- parsing (pure) ----------------------------------------------------------------------------


def parse_expiry(value: object, now: float) -> float | None:
    """null, epoch seconds, or an ISO 8601 time with a zone ('Z' or an offset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("not a time: give ISO 8601, epoch seconds or null")
    if isinstance(value, int | float):
        when = float(value)
        if not 0 < when < 1e11:
            raise ValueError("epoch seconds out of range")
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone (add 'Z' or an offset)")
        when = parsed.astimezone(UTC).timestamp()
    else:
        raise ValueError("not a time: give ISO 8601, epoch seconds or null")
    if when <= now:
        raise ValueError("is in the past")
    return when


def _secret(raw: dict[str, Any]) -> tuple[str, str, bool]:
    """(hash, tail) of the line's secret; ValueError names the field."""
    if ("secret" in raw) == ("secret_sha256" in raw):
        raise ValueError("give exactly one of secret and secret_sha256")
    if "secret" in raw:
        secret = raw["secret"]
        if not isinstance(secret, str) or not (apikey.FOREIGN_MIN <= len(secret)
                                               <= apikey.FOREIGN_MAX):
            raise ValueError(f"secret: must be a string of {apikey.FOREIGN_MIN} to "
                             f"{apikey.FOREIGN_MAX} characters")
        if not _VISIBLE_ASCII.fullmatch(secret):
            raise ValueError("secret: must be visible ASCII (no spaces or control characters)")
        if not apikey.is_acceptable(secret):
            raise ValueError("secret: starts with a gateway prefix (gwk_, gwh_) but is not a "
                             "well-formed gateway key (a mistyped one?)")
        return apikey.hash_secret(secret), apikey.tail(secret), not apikey.is_well_formed(secret)
    digest = raw["secret_sha256"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ValueError("secret_sha256: not 64 hex digits")
    return digest.lower(), "", True


IMPORTED_NOTE = ("{count} imported secret(s) are not gateway keys (gwk_...) or were given "
                 "by hash: they authenticate only once the gateway's config sets "
                 "keys.accept_imported: true (README, Migrating from Kong)")


def foreign_note(items: Sequence[ImportLine], accept_imported: bool) -> str | None:
    """What to tell the operator when the config in use would not accept these secrets."""
    count = sum(item.foreign for item in items)
    return None if accept_imported or not count else IMPORTED_NOTE.format(count=count)


def parse_line(text: str | bytes, number: int, *, now: float,
               default_scopes: tuple[str, ...] = ()) -> ImportLine:
    """One line, or ValueError whose message starts with the field at fault."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    account = raw.get("account")
    if not isinstance(account, str) or not 1 <= len(account.strip()) <= MAX_NAME:
        raise ValueError(f"account: must be a name or id of 1 to {MAX_NAME} characters")
    secret_hash, secret_tail, foreign = _secret(raw)
    scopes = raw.get("scopes")
    if scopes is None:
        chosen = default_scopes
    elif not isinstance(scopes, list):
        raise ValueError("scopes: must be a list of scope names")
    else:
        for scope in scopes:
            if not is_scope_name(scope):
                raise ValueError(f"scopes: {scope!r} is not a scope name such as "
                                 "yc.ai.vision.execute or yc.ai.*")
        chosen = tuple(dict.fromkeys(scopes))
    try:
        expires_at = parse_expiry(raw.get("expires_at"), now)
    except ValueError as exc:
        raise ValueError(f"expires_at: {exc}") from None
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ValueError(f"description: must be a string of at most {MAX_DESCRIPTION} "
                         "characters")
    try:
        check_text("account", account)
        check_text("description", description)
    except InvalidRequest as exc:
        raise ValueError(str(exc)) from None
    return ImportLine(number, account.strip(), secret_hash, secret_tail, chosen, expires_at,
                      description, foreign)


def parse_lines(lines: Iterable[str | bytes], *, now: float | None = None,
                default_scopes: tuple[str, ...] = ()) -> list[ImportLine]:
    """Every non-blank line, or BadImport listing each bad line (numbered from 1) and each
    secret given twice."""
    now = time.time() if now is None else now
    parsed: list[ImportLine] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            item = parse_line(text, number, now=now, default_scopes=default_scopes)
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        seen = first_line.setdefault(item.secret_hash, number)
        if seen != number:
            problems.append(f"line {number}: the same secret as line {seen}")
            continue
        parsed.append(item)
    if problems:
        raise BadImport(problems)
    return parsed


# -- writing -----------------------------------------------------------------------------------


async def _account_ids(store: KeyStore, items: Sequence[ImportLine], now: float,
                       report: ImportReport) -> dict[str, str]:
    """Each line's account (an existing id, else a name) -> account id; accounts named but
    missing are created. A name two accounts share is refused (BadImport): give the id."""
    wanted = {item.account for item in items}
    by_id = [a for a in wanted if _ACCOUNT_ID.fullmatch(a)]
    with store_errors():
        found = await mget(store.redis, [ACCOUNT + a for a in by_id])
    resolved = {a: a for a, data in zip(by_id, found, strict=True) if data is not None}
    unknown = set(by_id) - set(resolved)
    if unknown:
        raise BadImport([f"line {item.line}: account: no account with id {item.account!r}"
                         for item in items if item.account in unknown])
    names = wanted - set(resolved)
    if not names:
        return resolved
    holders: dict[str, list[str]] = {}
    after: str | None = None
    while True:  # accounts are few next to keys: one pass over their index
        accounts, after = await store.list_accounts(after=after, limit=1000)
        for account in accounts:
            if account.name in names:
                holders.setdefault(account.name, []).append(account.id)
        if after is None:
            break
    shared = {n for n, ids in holders.items() if len(ids) > 1}
    if shared:
        raise BadImport([f"line {item.line}: account: {item.account!r} names "
                         f"{len(holders[item.account])} accounts; give its id"
                         for item in items if item.account in shared])
    resolved.update((name, ids[0]) for name, ids in holders.items())
    missing = [Account(id=new_account_id(), name=name, created_at=now)
               for name in sorted(names - set(holders))]
    for start in range(0, len(missing), BATCH):
        # As KeyStore.put_account does, batched: index members, then the records (NX).
        part = missing[start:start + BATCH]
        with store_errors():
            await store.redis.zadd(ACCOUNTS_INDEX,
                                   {index_member(a.created_at, a.id): 0 for a in part})
            written = await _set_new(store.redis, [(ACCOUNT + a.id, a.to_json()) for a in part],
                                     confirm=store.confirming())
            if not all(written):  # a random id taken already (about 2**-95)
                raise StoreError("a new account id was taken; run the import again")
        # No invalidation to publish: no cache can hold anything about an id new until now.
        report.accounts_created += len(part)
        resolved.update((a.name, a.id) for a in part)
    return resolved


def _names(record: KeyRecord, secret_hash: str, now: float) -> bool:
    """Does the record still authenticate this secret? (Else its pointer is stale: a reissue
    or delete that stopped half-way, or a grace period over.)"""
    return record.secret_hash == secret_hash or (
        record.previous_hash == secret_hash
        and (record.previous_until is None or record.previous_until > now))


def _same(record: KeyRecord, item: ImportLine, account_id: str) -> bool:
    return (record.secret_hash == item.secret_hash and record.account_id == account_id
            and set(record.scopes) == set(item.scopes) and record.expires_at == item.expires_at)


async def import_keys(store: KeyStore, items: Sequence[ImportLine], *,
                      clock: Callable[[], float] = time.time, batch: int = BATCH,
                      progress: Callable[[int], None] | None = None,
                      actor: str = "cli") -> ImportReport:
    """Write `items` (from parse_lines); `progress` is told how many lines each batch
    settled."""
    report = ImportReport()
    now = clock()
    accounts = await _account_ids(store, items, now, report)
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        await _write_batch(store, part, accounts, now, report)
        if progress is not None:
            progress(len(part))
    await store.append_audit({"at": datetime.fromtimestamp(now, UTC).isoformat(),
                              "actor": actor, "action": "key.import", "ids": [],
                              "created": report.created, "unchanged": report.unchanged,
                              "conflicting": report.conflicting,
                              "accounts_created": report.accounts_created})
    return report


async def _write_batch(store: KeyStore, part: Sequence[ImportLine], accounts: dict[str, str],
                       now: float, report: ImportReport) -> None:
    redis = store.redis
    with store_errors():
        pointed = await mget(redis, [SECRET + item.secret_hash for item in part])
    holders = [p.decode() if isinstance(p, bytes) else p for p in pointed]
    held = [h for h in holders if h is not None]
    records = await store.read_keys(held) if held else {}
    new: list[tuple[ImportLine, KeyRecord, bool]] = []  # (line, record, pointer was stale)
    for item, holder in zip(part, holders, strict=True):
        account_id = accounts[item.account]
        found = records.get(holder) if holder is not None else None
        current = found[0] if found is not None else None
        if current is not None and _names(current, item.secret_hash, now):
            if _same(current, item, account_id):
                report.unchanged += 1
            elif current.secret_hash != item.secret_hash:
                report._conflict(item.line, f"the secret is the old secret of key {current.id} "
                                 "(reissued, in its grace period)")
            else:
                report._conflict(item.line, f"the secret is key {current.id}'s, with another "
                                 "account, scopes or expiry (left as it is)")
            continue
        record = KeyRecord(id=_fast_id(), type=API_KEY, account_id=account_id,
                           scopes=item.scopes, created_at=now, expires_at=item.expires_at,
                           description=item.description, secret_hash=item.secret_hash,
                           secret_tail=item.secret_tail)
        new.append((item, record, holder is not None))
    if not new:
        return
    with store_errors():
        # Index members first, then the records, then the pointers (store.py: a crash between
        # steps never leaves a key that authenticates but that listings cannot show).
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(KEYS_INDEX, {index_member(now, r.id): 0 for _, r, _ in new})
            per_account: dict[str, dict[str, int]] = {}
            for _, r, _ in new:
                per_account.setdefault(r.account_id, {})[index_member(now, r.id)] = 0
            for account_id, members in per_account.items():
                pipe.zadd(ACCOUNT_KEYS + account_id, cast(Any, members))
            await pipe.execute()
        stored = await _set_new(redis, [(KEY + r.id, orjson.dumps(r)) for _, r, _ in new])
        for (item, _, _), ok in zip(new, stored, strict=True):
            if not ok:  # a random id taken already (about 2**-119): that line waits a rerun
                report._conflict(item.line, "its new key id was taken; run the import again")
        new = [entry for entry, ok in zip(new, stored, strict=True) if ok]
        fresh = [(i, SECRET + item.secret_hash, r.id)
                 for i, (item, r, stale) in enumerate(new) if not stale]
        # A pointer that appeared since the read above is another writer's: kept.
        taken = await _set_new(redis, [(name, value) for _, name, value in fresh],
                               confirm=store.confirming())
        answers = [True] * len(new)
        for (position, _, _), ok in zip(fresh, taken, strict=True):
            answers[position] = ok
        stale_ones = [(item, r) for item, r, stale in new if stale]
        if stale_ones:
            async with redis.pipeline(transaction=False) as pipe:
                for item, r in stale_ones:
                    pipe.set(SECRET + item.secret_hash, r.id)
                await pipe.execute()
    lost = [(item, r) for (item, r, _), ok in zip(new, answers, strict=True) if not ok]
    report.created += len(new) - len(lost)
    for item, r in lost:
        report._conflict(item.line, "another writer stored this secret meanwhile")
        await store.delete_key(r)

