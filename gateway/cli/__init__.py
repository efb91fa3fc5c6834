"""The `gateway` command line (SPEC §8)."""

from __future__ import annotations

import logging
import os
import sys

import click

from gateway.config import Config, load_config
from gateway.errors import ConfigError, GatewayError

from . import manage, sign

CONFIG_HELP = "YAML config file (default: $GATEWAY_CONFIG, else built-in defaults)."


def _load(path: str | None) -> Config:
    try:
        return load_config(path, os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="api-auth-gateway")
def main() -> None:
    """API authentication gateway: API keys and signed requests in front of HTTP services."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--demo", is_flag=True,
              help="Also serve the demo upstreams (functions, speech, vision, translate) on "
                   "127.0.0.1:9101-9104, as config/gateway.example.yaml expects, and create a "
                   "demo account and API key on the first start.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_path: str | None, demo: bool, log_level: str) -> None:
    """Run the gateway."""
    from gateway.server import run as run_server  # deferred: keeps `--help` fast

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _load(config_path)
    try:
        run_server(config, demo=demo)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the port is taken
        raise click.ClickException(f"cannot start: {exc}") from None


@main.group("config")
def config_group() -> None:
    """Inspect configuration files."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a config file; print every problem with its field path."""
    config = _load(path)
    click.echo(f"{path}: OK ({len(config.routes)} routes)")


main.add_command(manage.accounts)
main.add_command(manage.keys)
main.add_command(manage.audit)
main.add_command(sign.sign)
