"""How the CLI prints: aligned tables for people, one JSON document for scripts. Neither lets a
stored name or description drive the terminal: what the service refuses in them (control
characters, bidi controls: gateway/keys/text.py) is printed escaped, for records written before
it refused them or straight into the store."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import click
import orjson

from gateway.keys.text import escape, escape_json


def emit_json(data: Any) -> None:
    click.echo(escape_json(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return escape(" ".join(str(v) for v in value)) or "-"
    return escape(str(value))


def emit_record(record: Mapping[str, Any]) -> None:
    width = max(len(name) for name in record)
    for name, value in record.items():
        click.echo(f"{name.ljust(width)}  {_cell(value)}")


def emit(record: Mapping[str, Any], as_json: bool) -> None:
    """One record: JSON for scripts, aligned `name  value` lines for people."""
    if as_json:
        emit_json(record)
    else:
        emit_record(record)


def emit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


class TableStream:
    """A table printed while its rows arrive: the first `sample` rows set the column widths,
    later rows reuse them (a longer cell just pushes its row along), so memory holds at most
    `sample` rows whatever the table's length."""

    def __init__(self, columns: Sequence[str], sample: int = 100) -> None:
        self.columns = list(columns)
        self.sample = sample
        self.count = 0
        self._pending: list[list[str]] = []
        self._widths: list[int] | None = None

    def add(self, row: Mapping[str, Any]) -> None:
        self.count += 1
        cells = [_cell(row.get(column)) for column in self.columns]
        if self._widths is not None:
            self._line(cells)
            return
        self._pending.append(cells)
        if len(self._pending) >= self.sample:
            self._flush()

    def close(self) -> None:
        if self._widths is None:
            self._flush()

    def _flush(self) -> None:
        self._widths = [max([len(c)] + [len(r[i]) for r in self._pending])
                        for i, c in enumerate(self.columns)]
        self._line([c.upper() for c in self.columns])
        for cells in self._pending:
            self._line(cells)
        self._pending = []

    def _line(self, cells: Sequence[str]) -> None:
        assert self._widths is not None
        click.echo("  ".join(v.ljust(w) for v, w in zip(cells, self._widths, strict=True))
                   .rstrip())


class JsonArrayStream:
    """One JSON array printed item by item ("[", items separated by ",\\n", "]"), one compact
    item per line, so a listing of any length needs the memory of one item."""

    def __init__(self) -> None:
        self.count = 0
        self._out: TextIO = sys.stdout

    def add(self, item: Any) -> None:
        # "[" goes out with the first item, so an error before any item prints nothing.
        self._out.write(("[\n" if self.count == 0 else ",\n")
                        + escape_json(orjson.dumps(item).decode()))
        self.count += 1

    def close(self) -> None:
        self._out.write("\n]\n" if self.count else "[]\n")
        self._out.flush()
