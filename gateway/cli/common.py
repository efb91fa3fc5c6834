"""Shared by the management commands: opening the lifecycle service on the configured store,
the common options, and parsing of durations, times and confirmations.

The commands work on the store the config names, so they also work while no gateway runs (the
embedded Redis is started for the command, or joined when a gateway already runs it); running
gateways see every change at once through the invalidation channel. Which store that is, is
found as gateway/discovery.py says; check_store keeps a command from making a new one by
accident.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from redis.exceptions import RedisError

from gateway.config import Config, load_config, parse_duration
from gateway.discovery import DATA_DIR_NAME, FROM_ENV, NEW
from gateway.errors import ConfigError, GatewayError, StoreUnavailable
from gateway.keys.limits import LimitChanges
from gateway.keys.model import UNSET
from gateway.keys.secrets import SecretBox, load_master_key
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import open_redis
from gateway.store.health import describe_store_error

P = ParamSpec("P")
R = TypeVar("R")

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False),
    help="Config naming the store (default: $GATEWAY_CONFIG, else built-in defaults). The "
         "embedded store is in $GATEWAY_DATA_DIR, else the config's data_dir (relative to the "
         "file), else the nearest .gateway here or above.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
# Marks the commands that may start a new store (with_service reads it): the others find nothing
# in an empty one, so they never make one.
init_option = click.option(
    "--init", is_flag=True,
    help="If no store is found here or above, create a new one in ./.gateway without asking.")


class NoStore(click.ClickException):
    """No store where the command looked, and none is made: exit 2, as for a usage error."""

    exit_code = 2


def check_store(config: Config, init: bool | None, cwd: Path) -> None:
    """Before a command opens the embedded store: refuse or ask when its data directory does
    not exist, so that no command makes a new, empty store by accident (issue 18, item 4).

    `init` is None for a command without --init: it works on what a store holds, so it only
    says none was found. A command with it (accounts create) makes the store when the config or
    GATEWAY_DATA_DIR names it, with --init, or when the operator says yes at a terminal."""
    if config.redis.url != "embedded" or config.data_dir.is_dir():
        return
    path = config.data_dir
    if config.data_dir_origin != NEW:  # named by GATEWAY_DATA_DIR or the config's data_dir
        named_by = ("GATEWAY_DATA_DIR" if config.data_dir_origin == FROM_ENV
                    else f"data_dir of {config.source}")
        if init is None:
            raise NoStore(f"no gateway store at {path} ({named_by}); nothing was created. "
                          "Correct the path, or start the store there with `gateway run` or "
                          "`gateway accounts create NAME`.")
    else:  # nothing named one, and the search from here up found none
        where = f"no gateway store found in {cwd} or any directory above it"
        other = ("name an existing store with --config or GATEWAY_CONFIG (or "
                 f"GATEWAY_DATA_DIR), or run the command where its {DATA_DIR_NAME} is (or "
                 "below)")
        if init is None:
            raise NoStore(f"{where}; nothing was created. To use a store, {other}; "
                          f"`gateway accounts create --init NAME` starts a new one in {path}.")
        if not init:
            if not sys.stdin.isatty():
                raise NoStore(f"{where}: pass --init to create a new one in {path}, or "
                              f"{other}.")
            click.confirm(f"No gateway store found here or above (searched from {cwd}). "
                          f"Create a new one in {path}?", abort=True, err=True)
    click.echo(f"Creating a new gateway store in {path}.", err=True)


def log_new_store(config: Config) -> None:
    """`gateway run` makes its store where none is: it says so (issue 18, item 4)."""
    if config.redis.url == "embedded" and not config.data_dir.is_dir():
        where = (" (none found from the current directory up)"
                 if config.data_dir_origin == NEW else "")
        logging.getLogger("gateway").info("creating a new store in %s%s", config.data_dir,
                                          where)


@asynccontextmanager
async def _service(config: Config) -> AsyncIterator[KeyService]:
    async with open_redis(config, role="cli") as (redis, _url):
        store = KeyStore(redis, confirm_replicas=config.redis.replicas_to_confirm,
                         confirm_timeout=config.redis.timeout / 2)
        if config.redis.replicas_to_confirm:
            from gateway.store.watch import StoreWatch  # here: it imports the metrics

            # Writes wait for as many replicas as the master has now (up to the setting).
            await StoreWatch(redis, config.redis.timeout, config.redis.idle_timeout,
                             confirm_replicas=config.redis.replicas_to_confirm,
                             on_confirm=store.confirm).check()
        await store.migrate()
        # With the embedded store the master key file is made on first use; an external store
        # needs GATEWAY_MASTER_KEY, and only HMAC keys ask for it.
        master_key = load_master_key(config, create=True)
        yield KeyService(store, default_scopes=config.keys.default_scopes,
                         secret_box=SecretBox(master_key) if master_key else None,
                         accept_imported=config.keys.accept_imported)


def with_service(func: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async command body with the service; turn gateway errors into clean exits."""

    @functools.wraps(func)
    def wrapper(config_path: str | None, **kwargs: Any) -> None:
        init: bool | None = kwargs.pop("init", None)  # None: the command has no --init

        async def body(config: Config) -> None:
            async with _service(config) as service:
                await func(service, **kwargs)

        try:
            cwd = Path.cwd()
            config = load_config(config_path, os.environ, cwd)
            check_store(config, init, cwd)
            asyncio.run(body(config))
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except StoreUnavailable as exc:
            # The cause in plain words (connection refused, authentication failed, ...).
            raise click.ClickException("key store unavailable: "
                                       f"{describe_store_error(exc)}") from None
        except GatewayError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            # The reader went away (`gateway keys list | head`): stop quietly, and keep Python
            # from complaining while it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except RedisError as exc:  # whatever escaped the store's own translation
            raise click.ClickException(f"key store error: {describe_store_error(exc)}") \
                from None

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



# -- limits (SPEC §11) -------------------------------------------------------------------------

def limit_options(*, removable: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--rate, --burst and --quota (and --no-rate/--no-quota where a limit can be removed)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--rate", help="Requests per second, minute or hour: 100/s, 6000/min, "
                                        "1000/h."),
            click.option("--burst", type=int, help="Requests the rate lets through at once "
                                                   "(default: the rate's count)."),
            click.option("--quota", help="Requests per UTC day or month, or in all: "
                                         "10000/day, 10000/month, 10000."),
        ]
        if removable:
            options += [click.option("--no-rate", is_flag=True, help="Remove the rate limit."),
                        click.option("--no-quota", is_flag=True, help="Remove the quota.")]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def limit_changes(rate: str | None, burst: int | None, quota: str | None,
                  no_rate: bool = False, no_quota: bool = False) -> LimitChanges | None:
    """The limits the options give, None when they give none."""
    if rate is not None and no_rate:
        raise click.UsageError("give --rate or --no-rate, not both")
    if quota is not None and no_quota:
        raise click.UsageError("give --quota or --no-quota, not both")
    if rate is None and burst is None and quota is None and not no_rate and not no_quota:
        return None
    return LimitChanges(
        rate=None if no_rate else (UNSET if rate is None else rate),
        burst=None if no_rate else (UNSET if burst is None else burst),
        quota=None if no_quota else (UNSET if quota is None else quota))
