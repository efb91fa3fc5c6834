"""`gateway accounts ...` and `gateway keys ...` (SPEC §8): the lifecycle service, from a shell.

They work on the store the config names, so they also work while no gateway runs (the embedded
Redis is started for the command, or joined when a gateway already runs it); running gateways
see every change at once through the invalidation channel.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import click

from gateway.config import load_config, parse_duration
from gateway.errors import ConfigError, GatewayError, NotFound
from gateway.keys.model import API_KEY, HMAC_KEY, Account
from gateway.keys.secrets import SecretBox, load_master_key
from gateway.keys.service import UNSET, KeyService, Unset
from gateway.keys.store import KeyStore
from gateway.store.client import open_redis

from .output import JsonArrayStream, TableStream, emit_json, emit_record

P = ParamSpec("P")
R = TypeVar("R")

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False),
    help="Config naming the store (default: $GATEWAY_CONFIG, else the embedded store in "
         "$GATEWAY_DATA_DIR or ./.gateway).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@asynccontextmanager
async def _service(config_path: str | None) -> AsyncIterator[KeyService]:
    config = load_config(config_path, os.environ)
    async with open_redis(config) as (redis, _url):
        # With the embedded store the master key file is made on first use; an external store
        # needs GATEWAY_MASTER_KEY, and only HMAC keys ask for it.
        master_key = load_master_key(config, create=True)
        yield KeyService(KeyStore(redis), default_scopes=config.keys.default_scopes,
                         secret_box=SecretBox(master_key) if master_key else None)


def with_service(func: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async command body with the service; turn gateway errors into clean exits."""

    @functools.wraps(func)
    def wrapper(config_path: str | None, **kwargs: Any) -> None:
        async def body() -> None:
            async with _service(config_path) as service:
                await func(service, **kwargs)

        try:
            asyncio.run(body())
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except GatewayError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            # The reader went away (`gateway keys list | head`): stop quietly, and keep Python
            # from complaining while it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)

    return wrapper


def parse_expiry(expires_in: str | None, expires_at: str | None) -> float | None:
    if expires_in is not None and expires_at is not None:
        raise click.UsageError("give --expires-in or --expires-at, not both")
    if expires_in is not None:
        try:
            seconds = parse_duration(expires_in)
        except ValueError:
            raise click.BadParameter("expected a duration such as 30d, 12h or 90m",
                                     param_hint="--expires-in") from None
        if seconds <= 0:
            raise click.BadParameter("must be greater than zero", param_hint="--expires-in")
        return datetime.now(UTC).timestamp() + seconds
    if expires_at is not None:
        try:
            moment = datetime.fromisoformat(expires_at)
        except ValueError:
            raise click.BadParameter("expected an ISO 8601 time such as 2027-01-31T00:00:00Z",
                                     param_hint="--expires-at") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if moment.timestamp() <= datetime.now(UTC).timestamp():
            raise click.BadParameter(f"{expires_at} is in the past; the expiry must be in "
                                     "the future", param_hint="--expires-at")
        return moment.timestamp()
    return None


# -- accounts ------------------------------------------------------------------------------------

@click.group("accounts")
def accounts() -> None:
    """Manage accounts (the owners of keys)."""


@accounts.command("create")
@click.argument("name")
@click.option("--no-api-access", is_flag=True,
              help="Create without the api_access right (its keys will not work).")
@json_option
@config_option
@with_service
async def accounts_create(service: KeyService, name: str, no_api_access: bool,
                          as_json: bool) -> None:
    """Create an account."""
    account = await service.create_account(name, api_access=not no_api_access)
    if as_json:
        emit_json(account.public())
    else:
        emit_record(account.public())


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
@json_option
@config_option
@with_service
async def keys_create(service: KeyService, account_id: str, key_type: str,
                      scopes: tuple[str, ...], expires_in: str | None, expires_at: str | None,
                      description: str, as_json: bool) -> None:
    """Create a key. Its secret is printed once and can never be shown again."""
    expiry = parse_expiry(expires_in, expires_at)
    key, secret = await service.create_key(
        account_id=account_id, key_type=API_KEY if key_type == "api-key" else HMAC_KEY,
        scopes=scopes, expires_at=expiry, description=description)
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
    key = await service.get_key(key_id)
    record = key.public(await service.last_used(key_id))
    if as_json:
        emit_json(record)
    else:
        emit_record(record)


# -- shared helpers ------------------------------------------------------------------------------

LIST_PAGE = 500  # rows fetched per round trip by the listings; memory holds one page
ACCOUNT_CACHE_MAX = 1000  # accounts remembered by one `keys list` for the status column
yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Do not ask for confirmation (needed when stdin is not a "
                               "terminal).")


def parse_duration_option(value: str, option: str, example: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise click.BadParameter(f"expected a duration such as {example}",
                                 param_hint=option) from None


def parse_time(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def confirm(question: str, yes: bool) -> None:
    """Go on only if --yes was given or the operator answers yes at a terminal; abort (exit 1)
    otherwise. Without a terminal and without --yes, refuse rather than wait for an answer."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException("refusing to go on without confirmation: stdin is not a "
                                   "terminal; pass --yes to confirm non-interactively")
    click.confirm(question, abort=True, err=True)


# -- accounts list / show / update / delete ------------------------------------------------------

ACCOUNT_COLUMNS = ("id", "name", "enabled", "api_access", "key_count", "created_at")


@accounts.command("list")
@json_option
@config_option
@with_service
async def accounts_list(service: KeyService, as_json: bool) -> None:
    """List every account with its number of keys, oldest first."""
    out: JsonArrayStream | TableStream = JsonArrayStream() if as_json else TableStream(
        ACCOUNT_COLUMNS)
    cursor: str | None = None
    while True:
        page = await service.list_accounts(cursor=cursor, limit=LIST_PAGE)
        for item in page.items:
            out.add(item)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    out.close()


@accounts.command("show")
@click.argument("account_id")
@json_option
@config_option
@with_service
async def accounts_show(service: KeyService, account_id: str, as_json: bool) -> None:
    """Show an account and its number of keys."""
    view = await service.account_view(await service.get_account(account_id))
    if as_json:
        emit_json(view)
    else:
        emit_record(view)


@accounts.command("update")
@click.argument("account_id")
@click.option("--enable/--disable", "enabled", default=None,
              help="Enable the account, or disable it: the keys of a disabled account do not "
                   "work (403 account_disabled).")
@click.option("--api-access/--no-api-access", "api_access", default=None,
              help="Grant or withdraw the api_access right: without it the account's keys do "
                   "not work (403 api_access_denied) and it gets no new keys.")
@json_option
@config_option
@with_service
async def accounts_update(service: KeyService, account_id: str, enabled: bool | None,
                          api_access: bool | None, as_json: bool) -> None:
    """Enable or disable an account, or change its api_access right. Running gateways apply
    the change at once."""
    if enabled is None and api_access is None:
        raise click.UsageError("nothing to change: give --enable or --disable, and/or "
                               "--api-access or --no-api-access")
    account = await service.update_account(account_id, enabled=enabled, api_access=api_access)
    view = await service.account_view(account)
    if as_json:
        emit_json(view)
    else:
        emit_record(view)


@accounts.command("delete")
@click.argument("account_id")
@click.option("--delete-keys", is_flag=True,
              help="Also delete the account's keys (without it, an account that still has keys "
                   "is not deleted).")
@yes_option
@json_option
@config_option
@with_service
async def accounts_delete(service: KeyService, account_id: str, delete_keys: bool, yes: bool,
                          as_json: bool) -> None:
    """Delete an account; refused while it has keys unless --delete-keys. Asks first unless
    --yes."""
    view = await service.account_view(await service.get_account(account_id))
    count = int(view["key_count"])
    if count and not delete_keys:
        raise click.ClickException(f"account {account_id!r} still has {count} key(s); delete "
                                   "them first or pass --delete-keys")
    if not yes:
        click.echo(f"Account {account_id} ({view['name']})"
                   + (f" and its {count} key(s)" if count else "") + " will be deleted.",
                   err=True)
    confirm("Delete it?", yes)
    deleted = await service.delete_account(account_id, delete_keys=delete_keys)
    if as_json:
        emit_json({"deleted_account": account_id, "deleted_keys": deleted})
    else:
        click.echo(f"Deleted account {account_id}"
                   + (f" and {len(deleted)} key(s)" if deleted else "") + ".")


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
                      as_json: bool) -> None:
    """Change a key's expiry and/or description: the only things about a key that can change
    (SPEC §1). Give one of --expires-in, --expires-at or --no-expiry, or --description, or
    both. To change scopes, account or type, create a new key."""
    given = [name for name, value in (("--expires-in", expires_in), ("--expires-at", expires_at),
                                      ("--no-expiry", no_expiry or None)) if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"give only one of --expires-in, --expires-at and --no-expiry "
                               f"(got {' and '.join(given)})")
    if not given and description is None:
        raise click.UsageError("nothing to change: give --expires-in, --expires-at, "
                               "--no-expiry or --description")
    expiry: float | Unset | None = UNSET
    if no_expiry:
        expiry = None
    elif given:
        expiry = parse_expiry(expires_in, expires_at)
    key = await service.update_key(key_id, expires_at=expiry,
                                   description=UNSET if description is None else description)
    view = await service.key_view(key)
    if as_json:
        emit_json(view)
    else:
        emit_record(view)


def _immutable(value: Any, what: str) -> None:
    if value:
        raise click.UsageError(f"only a key's expiry and description can change; create a new "
                               f"key to change its {what}")


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
                       + (f"  ({key.description})" if key.description else ""), err=True)
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


# -- audit ---------------------------------------------------------------------------------------

@click.group("audit")
def audit() -> None:
    """Read the audit trail of management changes (who, what, when, which ids)."""


AUDIT_COLUMNS = ("at", "actor", "action", "ids", "details")


def parse_since(text: str) -> float:
    try:
        return datetime.now(UTC).timestamp() - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise click.BadParameter("expected a duration ago such as 1h or 30m, or an ISO 8601 "
                                 "time such as 2026-01-31T00:00:00Z", param_hint="--since"
                                 ) from None


@audit.command("list")
@click.option("--since", help="Only entries from this long ago (1h, 30m, 7d) or from this "
                              "ISO 8601 time on; default: all.")
@json_option
@config_option
@with_service
async def audit_list(service: KeyService, since: str | None, as_json: bool) -> None:
    """List audit entries, oldest first. --json prints one JSON array, one entry per line."""
    start = parse_since(since) if since is not None else None
    out: JsonArrayStream | TableStream = JsonArrayStream() if as_json else TableStream(
        AUDIT_COLUMNS)
    cursor: str | None = None
    while True:
        page = await service.audit(since=start, cursor=cursor, limit=LIST_PAGE)
        for item in page.items:
            if as_json:
                out.add(item)
            else:
                details = " ".join(f"{k}={_detail(v)}" for k, v in item.items()
                                   if k not in ("id", "at", "actor", "action", "ids"))
                out.add({**item, "details": details or None})
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    out.close()


def _detail(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)
