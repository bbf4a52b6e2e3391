"""The ``trio-monitor`` entry point: the assembled group, and exit statuses.

Commands live one concept to a module (``_worker``, ``_operator``,
``_actions``, ``_queues``, ``_migrate``, ``_demo``, ``_dashboard``), each adding
itself to the group of :mod:`._group`; this module
imports them, and :func:`main` turns what escapes into an exit status.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from . import _actions, _dashboard, _demo, _migrate, _operator, _queues, _worker
from ._group import PROG, cli

__all__ = ["cli", "main"]

#: Importing a command module registers its commands on the group.
COMMAND_MODULES = (_actions, _dashboard, _demo, _migrate, _operator, _queues, _worker)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    # Library log records would interleave with the command's own output;
    # the worker sends them to stderr in the format asked for, and the other
    # commands report what went wrong in their error line.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
