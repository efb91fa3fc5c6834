"""`gateway accounts ...` and `gateway keys ...` (SPEC §8): the lifecycle service, from a shell.

They work on the store the config names, so they also work while no gateway runs (the embedded
Redis is started for the command, or joined when a gateway already runs it); running gateways
see every change at once through the invalidation channel.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import click

from gateway.config import load_config, parse_duration
from gateway.errors import ConfigError, GatewayError
from gateway.keys.model import API_KEY
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import open_redis

from .output import emit_json, emit_record

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
        yield KeyService(KeyStore(redis), default_scopes=config.keys.default_scopes)


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
    """Manage API keys."""


@keys.command("create")
@click.option("--account", "account_id", required=True, help="The owning account's id.")
@click.option("--type", "key_type", type=click.Choice(["api-key"]), default="api-key",
              show_default=True, help="Kind of key.")
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
        account_id=account_id, key_type=API_KEY if key_type == "api-key" else key_type,
        scopes=scopes, expires_at=expiry, description=description)
    record = {**key.public(), "secret": secret}
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
