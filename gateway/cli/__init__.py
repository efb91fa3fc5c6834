"""The `gateway` command line (SPEC §8)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import click

from gateway.config import Config, load_config
from gateway.datadir import UMASK
from gateway.errors import ConfigError, GatewayError

from . import accounts, audit, keys, masterkey, migrate, sign
from .common import log_new_store

CONFIG_HELP = ("YAML config file (default: $GATEWAY_CONFIG, else built-in defaults). The store "
               "is in $GATEWAY_DATA_DIR, else data_dir (relative to the file), else the nearest "
               ".gateway here or above, else a new ./.gateway.")


def _load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    try:
        return load_config(path, os.environ if env is None else env)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="api-auth-gateway")
def main() -> None:
    """API authentication gateway: API keys and signed requests in front of HTTP services."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes sharing the proxy port (default: the CPUs this process may "
                   "use: the affinity mask, capped by the cgroup CPU quota, rounded up). "
                   "With 1, everything runs in this one process.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="The proxy's port, over listen.port of the config (also: $GATEWAY_PORT).")
@click.option("--admin-port", type=click.IntRange(0, 65535), default=None,
              help="The admin listener's port, over admin.port of the config (also: "
                   "$GATEWAY_ADMIN_PORT).")
@click.option("--demo", is_flag=True,
              help="Also serve a demo upstream (an echo) wherever a route points at a loopback "
                   "address with a port, as config/gateway.example.yaml's routes do "
                   "(127.0.0.1:9101-9104); create a demo account and API key on the first "
                   "start; and with no admin token configured, use the one in the data "
                   "directory's admin.token (made on the first start) for the web page.")
@click.option("--log-level", default=None,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Overrides log.level of the config (default: info).")
def run(config_path: str | None, workers: int | None, port: int | None,
        admin_port: int | None, demo: bool, log_level: str | None) -> None:
    """Run the gateway. SIGHUP reloads the config; SIGTERM drains and stops."""
    # The flags are environment overrides given on the command line: a reload reads the
    # config again with this same mapping, so they keep holding.
    env = dict(os.environ)
    if port is not None:
        env["GATEWAY_PORT"] = str(port)
    if admin_port is not None:
        env["GATEWAY_ADMIN_PORT"] = str(admin_port)
    config = _load(config_path, env)
    if demo and not config.admin.all_tokens():
        from gateway.demo import demo_admin_token

        try:
            env["GATEWAY_ADMIN_TOKEN"] = demo_admin_token(config, show=sys.stdout.isatty())
        except OSError as exc:
            raise click.ClickException(f"cannot start: {exc}") from None
        config = _load(config_path, env)
    level = log_level or config.log.level
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_new_store(config)
    if not workers:
        from gateway.cpus import detect_limits

        limits = detect_limits()
        workers = limits.workers
        logging.getLogger("gateway").info(
            "%d workers by default: %d CPUs in the affinity mask, cgroup CPU quota %s "
            "(--workers N to choose)", workers, limits.affinity,
            "none" if limits.quota is None else f"{limits.quota} CPUs")
    # What this process and its workers create (metric files in the data directory) is
    # private, as the data directory is (gateway/datadir.py).
    os.umask(UMASK)
    try:
        if workers == 1:
            from gateway.server import run as run_server  # deferred: keeps `--help` fast

            run_server(config, demo=demo, env=env)
        else:
            from gateway.supervisor import prepare_metrics_dir

            # Before anything imports prometheus-client: the workers inherit this.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prepare_metrics_dir(config))
            from gateway.supervisor import run_supervised

            run_supervised(config, workers, env=env, demo=demo, log_level=level)
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


main.add_command(accounts.accounts)
main.add_command(keys.keys)
main.add_command(masterkey.master_key)
main.add_command(audit.audit)
main.add_command(sign.sign)
main.add_command(migrate.import_group)
