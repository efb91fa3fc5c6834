"""`gateway keys ...` (SPEC §8): create, list, show, update, delete and reissue keys."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

import click

from gateway.errors import GatewayError, NotFound
from gateway.keys import importing
from gateway.keys.model import API_KEY, HMAC_KEY, UNSET, Account, Unset
from gateway.keys.service import KeyService
from gateway.keys.text import escape
from gateway.limits import readout

from .common import (
    ACCOUNT_CACHE_MAX,
    LIST_PAGE,
    config_option,
    confirm,
    json_option,
    limit_changes,
    limit_options,
    parse_duration_option,
    parse_expiry,
    parse_time,
    with_service,
    yes_option,
)
from .output import JsonArrayStream, TableStream, emit, emit_json, emit_record, emit_table

# -- keys ----------------------------------------------------------------------------------------

@click.group("keys")
def keys() -> None:
    """Manage keys: API keys and HMAC keys."""


@keys.command("create")
@click.option("--account", "account_id", required=True, help="The owning account's id.")
@click.option("--type", "key_type", type=click.Choice(["api-key", "hmac"]),
              default="api-key", show_default=True,
              help="api-key: a bearer secret (Authorization: Api-Key ...); hmac: a token and "
                   "a secret for RFC 9421 signed requests (needs an expiry).")
@click.option("--scope", "scopes", multiple=True,
              help="A scope the key holds (repeat for more); default: keys.default_scopes.")
@click.option("--expires-in", help="Lifetime such as 30d, 12h or 90m.")
@click.option("--expires-at", help="Expiry as ISO 8601, e.g. 2027-01-31T00:00:00Z.")
@click.option("--description", default="", help="Free text shown in listings.")
@limit_options(removable=False)
@json_option
@config_option
@with_service
async def keys_create(service: KeyService, account_id: str, key_type: str,
                      scopes: tuple[str, ...], expires_in: str | None, expires_at: str | None,
                      description: str, rate: str | None, burst: int | None,
                      quota: str | None, as_json: bool) -> None:
    """Create a key. Its secret is printed once and can never be shown again."""
    expiry = parse_expiry(expires_in, expires_at)
    key, secret = await service.create_key(
        account_id=account_id, key_type=API_KEY if key_type == "api-key" else HMAC_KEY,
        scopes=scopes, expires_at=expiry, description=description,
        limits=limit_changes(rate, burst, quota))
    record = {**key.public(), "secret": secret}
    if key.type == HMAC_KEY:
        record["token"] = key.id  # the source system's name for an HMAC key's id
    if as_json:
        emit_json(record)
        return
    emit_record(record)
    click.echo("\nStore the secret now: it is not kept and will not be shown again.", err=True)


@keys.command("show")
@click.argument("key_id")
@json_option
@config_option
@with_service
async def keys_show(service: KeyService, key_id: str, as_json: bool) -> None:
    """Show a key (never its secret)."""
    record = await service.key_view(await service.get_key(key_id))
    if not as_json:
        record["quotas"] = "; ".join(
            f"{q['policy']} {q['quota']}: {q['remaining']} left ({q['used']} used)"
            + (f", resets {q['resets_at']}" if q["resets_at"] else "")
            for q in record["quotas"]) or None
    emit(record, as_json)


@keys.command("usage")
@click.argument("key_id")
@click.option("--days", type=click.IntRange(1, 7), default=1, show_default=True,
              help="How many UTC days back, today included (usage is kept 7 days).")
@click.option("--per-minute", is_flag=True, help="One row a minute instead of an hour.")
@json_option
@config_option
@with_service
async def keys_usage(service: KeyService, key_id: str, days: int, per_minute: bool,
                     as_json: bool) -> None:
    """A key's requests and refusals (rate_limited, quota_exhausted, ...) per hour or
    minute; hours and minutes without requests are left out."""
    series = await service.usage(key_id, days=days)
    rows = series if per_minute else readout.by_hour(series)
    if as_json:
        emit_json({"key_id": key_id, "step": "minute" if per_minute else "hour", "usage": rows})
        return
    when = "minute" if per_minute else "hour"
    reasons = sorted({reason for row in rows for reason in row["refused"]})
    emit_table([{when: row[when], "ok": row["ok"], **row["refused"]} for row in rows],
               [when, "ok", *reasons])




# -- keys list / update / delete / reissue -------------------------------------------------------

KEY_COLUMNS = ("id", "type", "account_id", "scopes", "created_at", "expires_at",
               "last_used_at", "masked_secret", "status")


def key_status(item: Mapping[str, Any], account: Account | None, now: float) -> str:
    """Whether the key works, in the order the gateway decides (SPEC §1, §5)."""
    expires_at = item.get("expires_at")
    if expires_at is not None and parse_time(expires_at) <= now:
        return "expired"
    if account is None:
        return "no account"
    if not account.enabled:
        return "account disabled"
    if not account.api_access:
        return "no api access"
    return "active"


@keys.command("list")
@click.option("--account", "account_id", help="Only this account's keys.")
@json_option
@config_option
@with_service
async def keys_list(service: KeyService, account_id: str | None, as_json: bool) -> None:
    """List keys (never their secrets), oldest first, with whether each one works.

    The listing streams page by page, so it handles any number of keys; --json prints one
    JSON array with one key per line."""
    if account_id is not None:
        await service.get_account(account_id)  # an unknown account fails before any output
    out: JsonArrayStream | TableStream = JsonArrayStream() if as_json else TableStream(
        KEY_COLUMNS)
    accounts_seen: dict[str, Account | None] = {}
    now = datetime.now(UTC).timestamp()
    try:
        async for item in service.iterate_keys(account_id=account_id, page_size=LIST_PAGE):
            owner = item["account_id"]
            if owner not in accounts_seen:
                if len(accounts_seen) >= ACCOUNT_CACHE_MAX:
                    accounts_seen.clear()
                try:
                    accounts_seen[owner] = await service.get_account(owner)
                except NotFound:
                    accounts_seen[owner] = None
            out.add({**item, "status": key_status(item, accounts_seen[owner], now)})
    except GatewayError:
        if isinstance(out, TableStream) and out.count:
            out.close()  # show the rows read so far; a JSON array stays unterminated
        raise
    out.close()


@keys.command("update")
@click.argument("key_id")
@click.option("--expires-in", help="New lifetime from now, such as 30d, 12h or 90m.")
@click.option("--expires-at", help="New expiry as ISO 8601, e.g. 2027-01-31T00:00:00Z.")
@click.option("--no-expiry", is_flag=True, help="Remove the expiry: the key never expires.")
@click.option("--description", help="New free-text description.")
@limit_options(removable=True)
@click.option("--scope", "scope", multiple=True, hidden=True, expose_value=False,
              callback=lambda ctx, param, value: _immutable(value, "scopes"))
@click.option("--account", hidden=True, expose_value=False,
              callback=lambda ctx, param, value: _immutable(value, "account"))
@click.option("--type", hidden=True, expose_value=False,
              callback=lambda ctx, param, value: _immutable(value, "type"))
@click.option("--name", hidden=True, expose_value=False,
              callback=lambda ctx, param, value: _immutable(value, "name"))
@json_option
@config_option
@with_service
async def keys_update(service: KeyService, key_id: str, expires_in: str | None,
                      expires_at: str | None, no_expiry: bool, description: str | None,
                      rate: str | None, burst: int | None, quota: str | None, no_rate: bool,
                      no_quota: bool, as_json: bool) -> None:
    """Change a key's expiry, description or limits: the only things about a key that can
    change (SPEC §1, §11). Give one of --expires-in, --expires-at or --no-expiry, and/or
    --description, and/or limits. To change scopes, account or type, create a new key."""
    limits = limit_changes(rate, burst, quota, no_rate, no_quota)
    given = [name for name, value in (("--expires-in", expires_in), ("--expires-at", expires_at),
                                      ("--no-expiry", no_expiry or None)) if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"give only one of --expires-in, --expires-at and --no-expiry "
                               f"(got {' and '.join(given)})")
    if not given and description is None and limits is None:
        raise click.UsageError("nothing to change: give --expires-in, --expires-at, "
                               "--no-expiry, --description, --rate, --burst, --quota, "
                               "--no-rate or --no-quota")
    expiry: float | Unset | None = UNSET
    if no_expiry:
        expiry = None
    elif given:
        expiry = parse_expiry(expires_in, expires_at)
    key = await service.update_key(key_id, expires_at=expiry,
                                   description=UNSET if description is None else description,
                                   limits=limits)
    view = await service.key_view(key)
    emit(view, as_json)


def _immutable(value: Any, what: str) -> None:
    if value:
        raise click.UsageError(f"only a key's expiry, description and limits can change; "
                               f"create a new key to change its {what}")


@keys.command("delete")
@click.argument("key_ids", nargs=-1, required=True)
@yes_option
@json_option
@config_option
@with_service
async def keys_delete(service: KeyService, key_ids: tuple[str, ...], yes: bool,
                      as_json: bool) -> None:
    """Delete one or more keys at once: all of them, or none when any id is unknown. Lists
    them and asks first unless --yes. Running gateways stop accepting them at once."""
    if not yes:
        found = {key.id: key for key in await service.get_keys(key_ids)}
        missing = [key_id for key_id in dict.fromkeys(key_ids) if key_id not in found]
        if missing:
            raise click.ClickException("no key with id " + ", ".join(repr(m) for m in missing)
                                       + "; nothing deleted")
        click.echo(f"{len(found)} key(s) will be deleted:", err=True)
        for key in found.values():
            click.echo(f"  {key.id}  account {key.account_id}  {key.masked_secret()}  "
                       f"scopes {' '.join(key.scopes) or '-'}"
                       + (f"  ({escape(key.description)})" if key.description else ""),
                       err=True)
    confirm("Delete them?", yes)
    try:
        deleted = await service.delete_keys(key_ids)
    except NotFound as exc:
        raise click.ClickException(f"{exc}; nothing deleted") from None
    if as_json:
        emit_json({"deleted": [k.id for k in deleted]})
    else:
        click.echo(f"Deleted {len(deleted)} key(s): {' '.join(k.id for k in deleted)}")


@keys.command("reissue")
@click.argument("key_id")
@click.option("--grace", default="0s", show_default=True,
              help="How long the old secret keeps working, such as 10m or 24h; never past the "
                   "key's own expiry.")
@json_option
@config_option
@with_service
async def keys_reissue(service: KeyService, key_id: str, grace: str, as_json: bool) -> None:
    """Give a key a new secret under the same id, scopes and expiry. The new secret is printed
    once and can never be shown again."""
    seconds = parse_duration_option(grace, "--grace", "10m, 24h or 0s")
    key, secret = await service.reissue_key(key_id, grace=seconds)
    record = {**await service.key_view(key), "secret": secret}
    if as_json:
        emit_json(record)
        return
    emit_record(record)
    until = record["previous_secret_valid_until"]
    click.echo("\n" + (f"The old secret keeps working until {until}." if until else
                       "The old secret no longer works."), err=True)
    click.echo("Store the new secret now: it is not kept and will not be shown again.",
               err=True)


@keys.command("import")
@click.argument("source", type=click.File("rb"))
@json_option
@config_option
@with_service
async def keys_import(service: KeyService, source: IO[bytes], as_json: bool) -> None:
    """Import existing API keys from SOURCE, JSON lines ('-' for stdin), one key a line:
    {"account": name or id, "secret": plaintext | "secret_sha256": hex, "scopes": [...],
    "expires_at": ISO 8601 | epoch | null, "description": "..."}. Every line is checked
    first: one bad line and nothing is written. Accounts are created by name as needed; a
    second run of the same file changes nothing and says so."""
    items = importing.parse_lines(source, now=service.clock(),
                                  default_scopes=service.default_scopes)
    if sys.stderr.isatty() and not as_json:
        with click.progressbar(length=len(items), label="importing", file=sys.stderr) as bar:
            report = await importing.import_keys(service.store, items, clock=service.clock,
                                                 progress=bar.update, actor=service.actor)
    else:
        report = await importing.import_keys(service.store, items, clock=service.clock,
                                             actor=service.actor)
    if as_json:
        emit_json(report.public())
        return
    click.echo(f"created {report.created}, unchanged {report.unchanged}, conflicting "
               f"{report.conflicting}; accounts created {report.accounts_created}")
    for conflict in report.conflicts:
        click.echo(escape(conflict), err=True)
    note = importing.foreign_note(items, service.accept_imported)
    if note:
        click.echo("note: " + note, err=True)
