"""`gateway accounts ...` (SPEC §8): accounts, the owners of keys."""

from __future__ import annotations

import click

from gateway.keys.service import KeyService
from gateway.keys.text import escape

from .common import (
    LIST_PAGE,
    config_option,
    confirm,
    init_option,
    json_option,
    limit_changes,
    limit_options,
    with_service,
    yes_option,
)
from .output import JsonArrayStream, TableStream, emit, emit_json

# -- accounts ------------------------------------------------------------------------------------

@click.group("accounts")
def accounts() -> None:
    """Manage accounts (the owners of keys)."""


@accounts.command("create")
@click.argument("name")
@click.option("--no-api-access", is_flag=True,
              help="Create without the api_access right (its keys will not work).")
@json_option
@init_option
@config_option
@with_service
async def accounts_create(service: KeyService, name: str, no_api_access: bool,
                          as_json: bool) -> None:
    """Create an account. The first one may start a new store: without a store found here or
    above (or named by the config or GATEWAY_DATA_DIR), this asks first, or needs --init."""
    account = await service.create_account(name, api_access=not no_api_access)
    emit(account.public(), as_json)




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
    emit(view, as_json)


@accounts.command("update")
@click.argument("account_id")
@click.option("--enable/--disable", "enabled", default=None,
              help="Enable the account, or disable it: the keys of a disabled account do not "
                   "work (403 account_disabled).")
@click.option("--api-access/--no-api-access", "api_access", default=None,
              help="Grant or withdraw the api_access right: without it the account's keys do "
                   "not work (403 api_access_denied) and it gets no new keys.")
@limit_options(removable=True)
@json_option
@config_option
@with_service
async def accounts_update(service: KeyService, account_id: str, enabled: bool | None,
                          api_access: bool | None, rate: str | None, burst: int | None,
                          quota: str | None, no_rate: bool, no_quota: bool,
                          as_json: bool) -> None:
    """Enable or disable an account, change its api_access right, or the rate limit and
    quota its keys share. Running gateways apply the change at once."""
    limits = limit_changes(rate, burst, quota, no_rate, no_quota)
    if enabled is None and api_access is None and limits is None:
        raise click.UsageError("nothing to change: give --enable or --disable, and/or "
                               "--api-access or --no-api-access, and/or --rate, --burst, "
                               "--quota, --no-rate or --no-quota")
    account = await service.update_account(account_id, enabled=enabled, api_access=api_access,
                                           limits=limits)
    view = await service.account_view(account)
    emit(view, as_json)


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
        click.echo(f"Account {account_id} ({escape(view['name'])})"
                   + (f" and its {count} key(s)" if count else "") + " will be deleted.",
                   err=True)
    confirm("Delete it?", yes)
    deleted = await service.delete_account(account_id, delete_keys=delete_keys)
    if as_json:
        emit_json({"deleted_account": account_id, "deleted_keys": deleted})
    else:
        click.echo(f"Deleted account {account_id}"
                   + (f" and {len(deleted)} key(s)" if deleted else "") + ".")


