"""`gateway audit list` (SPEC §8): the trail of management changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from gateway.config import parse_duration
from gateway.keys.service import KeyService

from .common import (
    LIST_PAGE,
    config_option,
    json_option,
    parse_time,
    with_service,
)
from .output import JsonArrayStream, TableStream

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
