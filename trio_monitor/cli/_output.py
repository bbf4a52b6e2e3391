"""How listings print: aligned tables on a terminal, JSON with ``--json``.

JSON uses the records' attribute names; a job's state appears as its
``name`` (``"failed"``), with the state's own fields under ``state_data``.
Timestamps are ISO 8601 strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs
import click
from rich.console import Console
from rich.table import Table

from trio_monitor import jobs

__all__ = ["json_option", "print_json", "print_table", "record_json", "job_json"]

F = TypeVar("F", bound=Callable[..., Any])


def json_option(fn: F) -> F:
    """Decorator: add ``--json`` (print JSON instead of a table)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        fn
    )


def _plain(_record: object, _field: object, value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def record_json(record: attrs.AttrsInstance) -> dict[str, object]:
    """An attrs record as a JSON-ready dict, by attribute name (nested records too)."""
    return attrs.asdict(record, value_serializer=_plain)


def job_json(job: jobs.Job) -> dict[str, object]:
    """A job as a JSON-ready dict: its attributes, the state by name, the state's fields."""
    data = record_json(job)
    data["state"] = job.state.name
    data["state_data"] = record_json(job.state)
    return data


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print an aligned table on stdout.

    On a terminal: a boxed table that fits its width. Otherwise (a pipe, a
    file): plain columns separated by spaces, never folded, with no
    trailing blanks, for ``grep``, ``awk`` and ``cut``.
    """
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    console = Console(highlight=False)
    if console.is_terminal:
        console.print(table)
        return
    table.box = None
    table.pad_edge = False
    wide = Console(highlight=False, width=100_000, no_color=True)
    with wide.capture() as captured:
        wide.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))
