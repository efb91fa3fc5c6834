"""`gateway master-key ...` (issue 17, item 11): see which master keys the stored HMAC secrets
are sealed under, re-encrypt them under the newest, and, for the embedded store's key file,
add a new key and take old ones out. README, "Rotating the master key", gives the order."""

from __future__ import annotations

import time
from pathlib import Path

import click

from gateway.errors import Conflict
from gateway.keys.masterkeys import (
    ORIGIN_DATA_DIR,
    ORIGIN_ENV,
    add_key_to_file,
    remove_key_from_file,
)
from gateway.keys.model import iso
from gateway.keys.rotation import Outcome, census, reencrypt
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService

from .common import config_option, confirm, json_option, with_service, yes_option
from .output import emit, emit_json, emit_table

GUIDE = "README, Rotating the master key"


@click.group("master-key")
def master_key() -> None:
    """Rotate the master key that encrypts HMAC secrets at rest."""


def _box(service: KeyService) -> SecretBox:
    if service.secret_box is None:
        raise Conflict("no master key is configured (GATEWAY_MASTER_KEY, "
                       "GATEWAY_MASTER_KEY_FILE, or the embedded store's master.key)")
    return service.secret_box


@master_key.command("status")
@json_option
@config_option
@with_service
async def master_key_status(service: KeyService, as_json: bool) -> None:
    """The configured master keys (newest first: it encrypts) and how many stored HMAC
    secrets each one seals. A key sealing none can be removed."""
    box = _box(service)
    found = await census(service.store, box)
    rows = found.rows(box)
    if as_json:
        emit_json({"source": box.keys.source, "keys": rows, "hmac_keys": found.hmac_keys,
                   "without_key_id": found.without_id})
        return
    click.echo(f"Master keys from {box.keys.source}, newest first (the first encrypts, any "
               "decrypts):")
    emit_table(rows, ["id", "role", "secrets"])
    click.echo(f"{found.hmac_keys} HMAC key(s)" + (
        f"; {found.without_id} secret(s) sealed before master keys had ids, counted under "
        "the key that opens them" if found.without_id else "") + ".")
    older = found.under_older_keys(box)
    if older:
        click.echo(f"{older} secret(s) are not under the newest key: run `gateway master-key "
                   "reencrypt`.")
    idle = [r["id"] for r in rows[1:] if r["role"] == "decrypts" and not r["secrets"]]
    if idle:
        click.echo(f"Sealing no stored secret, so removable: {', '.join(idle)} "
                   f"({_how_to_remove(box, idle)}).")


@master_key.command("reencrypt")
@yes_option
@json_option
@config_option
@with_service
async def master_key_reencrypt(service: KeyService, yes: bool, as_json: bool) -> None:
    """Re-encrypt every stored HMAC secret under the newest master key, while gateways run.
    Every gateway must hold that key first (README, Rotating the master key)."""
    box = _box(service)
    box.refresh()
    if box.keys.origin != ORIGIN_DATA_DIR and not yes:
        # Every process on the embedded store reads the same key file; elsewhere this
        # command cannot see what the running gateways hold.
        click.echo(f"Every HMAC secret will be sealed under master key {box.newest} (the first "
                   f"of {box.keys.source}). Every gateway and admin API sharing this store "
                   f"must hold that key already, or it answers 503 to signed requests: "
                   f"{_how_to_add(box)}.", err=True)
    confirm("Re-encrypt now?", yes or box.keys.origin == ORIGIN_DATA_DIR)
    outcome = await reencrypt(service.store, box)
    _report(outcome, as_json)


@master_key.command("rotate")
@json_option
@config_option
@with_service
async def master_key_rotate(service: KeyService, as_json: bool) -> None:
    """Embedded store: add a new master key first in the data directory's master.key (running
    gateways read it from there), then re-encrypt every stored HMAC secret under it. The old
    keys stay until removed with `gateway master-key remove`."""
    box = _box(service)
    keys = box.keys
    if keys.origin != ORIGIN_DATA_DIR or keys.file is None:
        raise click.ClickException(
            f"the master keys come from {keys.source}, which this command does not change: "
            f"{_how_to_add(box)}; then run `gateway master-key reencrypt` ({GUIDE})")
    added = add_key_to_file(Path(keys.file), keys.origin)
    box.refresh()
    if not as_json:
        click.echo(f"New master key {added.ids[0]} added first to {keys.file}; re-encrypting.",
                   err=True)
    _report(await reencrypt(service.store, box), as_json)


@master_key.command("remove")
@click.argument("key_id")
@config_option
@with_service
async def master_key_remove(service: KeyService, key_id: str) -> None:
    """Take an older master key out of the key file, once no stored secret is sealed under
    it (checked first). Never the newest: it encrypts."""
    box = _box(service)
    box.refresh()
    keys = box.keys
    if keys.origin == ORIGIN_ENV or keys.file is None:
        raise click.ClickException(f"the master keys come from {keys.source}: "
                                   f"{_how_to_remove(box, [key_id])}")
    found = await census(service.store, box)
    if found.by_key.get(key_id):
        raise click.ClickException(
            f"{found.by_key[key_id]} stored secret(s) are still sealed under master key "
            f"{key_id}: run `gateway master-key reencrypt` first")
    left = remove_key_from_file(Path(keys.file), keys.origin, key_id)
    await service.store.append_audit({"at": iso(time.time()), "actor": service.actor,
                                      "action": "master_key.remove", "ids": [],
                                      "master_key": key_id, "file": keys.file})
    click.echo(f"Master key {key_id} removed from {keys.file}; it holds {', '.join(left.ids)}.")


def _how_to_add(box: SecretBox) -> str:
    if box.keys.origin == ORIGIN_ENV:
        return ("put the new key first in GATEWAY_MASTER_KEY (comma-separated, newest first) "
                "everywhere and restart the gateways")
    return "put the new key on the first line of the key file on every gateway's host"


def _how_to_remove(box: SecretBox, ids: list[str]) -> str:
    if box.keys.origin == ORIGIN_ENV:
        return (f"take {', '.join(ids)} out of GATEWAY_MASTER_KEY everywhere once `gateway "
                "master-key status` shows no secret under it")
    return "; ".join(f"gateway master-key remove {i}" for i in ids)


def _report(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        emit_json(outcome.public())
    else:
        emit({"re-encrypted": f"{outcome.reencrypted} (now under master key "
                              f"{outcome.master_key})",
              "already current": outcome.already_current,
              "deleted meanwhile": outcome.deleted,
              "conflicts": f"{outcome.conflicts}" + (
                  " (a concurrent change landed first: read again, redone)"
                  if outcome.conflicts else ""),
              "took": f"{outcome.seconds:.1f} s, {outcome.passes} pass(es)"}, False)
    if outcome.undecryptable:
        click.echo(f"Not re-encrypted, no master key held opens their secret: "
                   f"{', '.join(outcome.undecryptable)}", err=True)
    if outcome.skipped:
        click.echo(f"Not re-encrypted, changed too often meanwhile (run again): "
                   f"{', '.join(outcome.skipped)}", err=True)
    if not outcome.complete:
        raise click.ClickException(
            f"{len(outcome.undecryptable) + len(outcome.skipped)} HMAC key(s) are not under "
            f"master key {outcome.master_key}: keep the older keys until they are")
