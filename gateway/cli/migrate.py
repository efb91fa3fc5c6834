"""`gateway import kong FILE` (issue 19): Kong key-auth consumers, keys and ACL groups moved
into the key table, through the same checks and writer as `gateway keys import`."""

from __future__ import annotations

import sys
from typing import IO

import click
import orjson
import yaml

from gateway.keys import importing, kong
from gateway.keys.service import KeyService
from gateway.keys.text import escape

from .common import config_option, with_service
from .output import emit_json


@click.group("import")
def import_group() -> None:
    """Import keys from another gateway."""


def _mapping(values: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    mapping: dict[str, tuple[str, ...]] = {}
    for value in values:
        group, sep, scopes = value.partition("=")
        if not sep or not group:
            raise click.BadParameter(f"{value!r}: give GROUP=SCOPE[,SCOPE...]",
                                     param_hint="--acl-scope")
        mapping[group] = mapping.get(group, ()) + tuple(s for s in scopes.split(",") if s)
    return mapping


@import_group.command("kong")
@click.argument("source", type=click.File("rb"))
@click.option("--acl-scope", "acl_scopes", multiple=True, metavar="GROUP=SCOPE[,SCOPE]",
              help="The scopes a Kong ACL group becomes (repeat for more groups). Groups "
                   "without one are listed as not carried over.")
@click.option("--dry-run", is_flag=True, help="Check and report; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@config_option
@with_service
async def import_kong(service: KeyService, source: IO[bytes], acl_scopes: tuple[str, ...],
                      dry_run: bool, as_json: bool) -> None:
    """Import a `deck dump` or `kong config db_export` YAML file: consumers become accounts,
    keyauth_credentials keys (the same secrets keep working), ACL groups scopes through
    --acl-scope. Prints what it could not map."""
    try:
        document = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{source.name}: not YAML: {exc}") from None
    converted = kong.convert(document, _mapping(acl_scopes), now=service.clock())
    try:
        items = importing.parse_lines([orjson.dumps(row) for row in converted.rows],
                                      now=service.clock())
    except importing.BadImport as exc:
        # Numbered by key-auth credential, not by file line: name the consumer instead.
        named = []
        for problem in exc.problems:
            number, _, reason = problem.removeprefix("line ").partition(": ")
            account = converted.rows[int(number) - 1]["account"]
            named.append(f"consumer {account} (key-auth credential {number}): {reason}")
        raise importing.BadImport(named, exc.total) from None
    report = importing.ImportReport()
    if not dry_run:
        report = await importing.import_keys(service.store, items, clock=service.clock,
                                             actor=service.actor)
    if as_json:
        emit_json({**report.public(), "keys_found": len(items), "dry_run": dry_run,
                   "not_mapped": converted.notes})
        return
    click.echo(f"{len(items)} key(s) found" + (" (dry run: nothing written)" if dry_run else
               f"; created {report.created}, unchanged {report.unchanged}, conflicting "
               f"{report.conflicting}; accounts created {report.accounts_created}"))
    for conflict in report.conflicts:
        click.echo(escape(conflict), err=True)
    if converted.notes:
        click.echo("not mapped:", err=True)
        for note in converted.notes:
            click.echo("  " + escape(note), err=True)
    imported = importing.foreign_note(items, service.accept_imported)
    if imported:
        click.echo("note: " + imported, err=True)
    sys.stdout.flush()
