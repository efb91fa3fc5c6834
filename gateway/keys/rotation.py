"""Master-key rotation (issue 17, item 11): which master keys the stored HMAC secrets are
sealed under (`census`), and re-sealing every one under the newest (`reencrypt`), online.

Each record is re-sealed by a compare-and-set (KeyStore.swap_key): written only over the exact
bytes it was read as, so a concurrent update, reissue or delete is never undone. A lost race is
read again and re-sealed again (or found current, or gone); several runs at once share the work
and each tells what it did. Each write publishes the key's invalidation, as any change does:
running gateways read the record again, under the new key, within a second.

A record written meanwhile by a process that still seals under an older key (one not yet given
the new key) would stay behind a single pass; a second pass checks for that (see `reencrypt`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.keys.model import KeyRecord, iso
from gateway.keys.secrets import MasterKeyError, SecretBox, sealed_under
from gateway.keys.store import KeyStore, Swap

SEALED_FIELDS = ("secret", "previous_secret")  # in KeyRecord.extra; previous: a reissue's grace
BATCH = 200  # records read per round trip
CONCURRENCY = 16  # records being written at once (well inside the store's pool)
MAX_ATTEMPTS = 10  # races lost on one record before it is left for another run


def resealed(box: SecretBox, record: KeyRecord, now: float) -> KeyRecord | None:
    """`record` with every sealed secret under the newest master key; None when they all are
    already. An old secret whose reissue grace is over is dropped rather than re-sealed (it
    can never be used again, and must not keep an older master key in use). Raises
    MasterKeyError when a secret does not open with the keys held."""
    extra = dict(record.extra)
    changed = False
    for name in SEALED_FIELDS:
        sealed = extra.get(name)
        if not isinstance(sealed, str) or sealed_under(sealed) == box.newest:
            continue
        if name == "previous_secret" and (record.previous_until or 0) <= now:
            del extra[name]
        else:
            extra[name] = box.seal(record.id, box.open(record.id, sealed))
        changed = True
    return record.with_changes(extra=extra) if changed else None


@dataclass
class Census:
    """Sealed secrets (a key in its reissue grace holds two) by the master key they are
    under. One sealed before master keys had ids counts under the key that opens it, and
    under `without_id` too; one that no key held opens, under `unopened`."""

    hmac_keys: int = 0
    by_key: Counter[str] = field(default_factory=Counter)
    without_id: int = 0
    unopened: int = 0

    def rows(self, box: SecretBox) -> list[dict[str, Any]]:
        """One row per master key: the configured ones in their order, then any a stored
        secret names that is not configured here."""
        configured = box.keys.ids
        rows = [{"id": ident, "role": "encrypts" if n == 0 else "decrypts",
                 "secrets": self.by_key.get(ident, 0)} for n, ident in enumerate(configured)]
        rows += [{"id": ident, "role": "missing", "secrets": count}
                 for ident, count in sorted(self.by_key.items()) if ident not in configured]
        if self.unopened:
            rows.append({"id": "?", "role": "missing", "secrets": self.unopened})
        return rows

    def under_older_keys(self, box: SecretBox) -> int:
        """Secrets not under the newest key: while any remain, no older key may go."""
        return sum(c for i, c in self.by_key.items() if i != box.newest) + self.unopened


async def census(store: KeyStore, box: SecretBox) -> Census:
    """Read every HMAC record once, one batch in memory at a time; nothing is written."""
    result = Census()
    async for ids in store.hmac_key_ids(BATCH):
        for record, _ in (await store.read_keys(ids)).values():
            result.hmac_keys += 1
            for sealed in _sealed(record):
                ident = sealed_under(sealed)
                if ident is None:
                    result.without_id += 1
                    try:
                        ident = box.open_with(record.id, sealed)[1]
                    except MasterKeyError:
                        result.unopened += 1
                        continue
                result.by_key[ident] += 1
    return result


@dataclass
class Outcome:
    master_key: str  # the id of the key everything is sealed under now
    reencrypted: int = 0  # records written, a secret (or two) re-sealed
    already_current: int = 0
    deleted: int = 0  # gone before they could be re-sealed
    conflicts: int = 0  # a concurrent change landed first: read again and redone
    undecryptable: list[str] = field(default_factory=list)  # no key held opens them: left
    skipped: list[str] = field(default_factory=list)  # changed MAX_ATTEMPTS times meanwhile
    passes: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.undecryptable and not self.skipped

    def public(self) -> dict[str, Any]:
        return {"master_key": self.master_key, "reencrypted": self.reencrypted,
                "already_current": self.already_current, "deleted": self.deleted,
                "conflicts": self.conflicts, "undecryptable": self.undecryptable,
                "skipped": self.skipped, "passes": self.passes,
                "seconds": round(self.seconds, 3)}


async def reencrypt(store: KeyStore, box: SecretBox, *, actor: str = "cli",
                    clock: Callable[[], float] = time.time) -> Outcome:
    """Re-seal every stored HMAC secret under the newest master key. When the first pass
    re-sealed anything, a second one looks for secrets written under an older key meanwhile
    (and re-seals them); its finds add to `reencrypted`, its other counts are not added."""
    started = time.monotonic()
    box.refresh()
    outcome = Outcome(master_key=box.newest)
    first = await _pass(store, box, clock)
    outcome.passes = 1
    _add(outcome, first, everything=True)
    if first.reencrypted:
        second = await _pass(store, box, clock)
        outcome.passes = 2
        _add(outcome, second, everything=False)
    outcome.seconds = time.monotonic() - started
    await store.append_audit({"at": iso(clock()), "actor": actor,
                              "action": "master_key.reencrypt", "ids": [],
                              **{k: v for k, v in outcome.public().items() if k != "seconds"}})
    return outcome


def _add(total: Outcome, part: Outcome, *, everything: bool) -> None:
    total.reencrypted += part.reencrypted
    total.undecryptable = sorted(set(total.undecryptable) | set(part.undecryptable))
    total.skipped = sorted(set(total.skipped) | set(part.skipped))
    if everything:
        total.already_current += part.already_current
        total.deleted += part.deleted
        total.conflicts += part.conflicts


async def _pass(store: KeyStore, box: SecretBox, clock: Callable[[], float]) -> Outcome:
    outcome = Outcome(master_key=box.newest)
    places = asyncio.Semaphore(CONCURRENCY)

    async def one(key_id: str, found: tuple[KeyRecord, bytes] | None) -> None:
        async with places:
            await _reencrypt_one(store, box, key_id, found, outcome, clock)

    async for ids in store.hmac_key_ids(BATCH):
        found = await store.read_keys(ids)
        await asyncio.gather(*(one(i, found.get(i)) for i in dict.fromkeys(ids)))
    return outcome


async def _reencrypt_one(store: KeyStore, box: SecretBox, key_id: str,
                         found: tuple[KeyRecord, bytes] | None, outcome: Outcome,
                         clock: Callable[[], float]) -> None:
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.001 * attempt)  # let the other writer finish
            found = await store.read_key(key_id)
        if found is None:
            outcome.deleted += 1
            return
        record, raw = found
        try:
            changed = resealed(box, record, clock())
        except MasterKeyError:
            outcome.undecryptable.append(key_id)
            return
        if changed is None:
            outcome.already_current += 1
            return
        swapped = await store.swap_key(raw, record, changed)
        if swapped is Swap.DONE:
            outcome.reencrypted += 1
            return
        if swapped is Swap.GONE:
            outcome.deleted += 1
            return
        outcome.conflicts += 1
    outcome.skipped.append(key_id)


def _sealed(record: KeyRecord) -> Iterable[str]:
    return [v for n in SEALED_FIELDS if isinstance(v := record.extra.get(n), str)]
