"""The ``trio-monitor`` command group: every subcommand is registered here.

Commands live one concept to a module (``_worker``, ``_operator``,
``_demo``); this module only assembles them, and :func:`main` turns what
escapes into an exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from trio_monitor import __version__

from ._demo import demo
from ._operator import delete, enqueue, job, list_jobs, recurring, servers
from ._storage import storage_option
from ._worker import worker

__all__ = ["cli", "main"]

PROG = "trio-monitor"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name=PROG)
@storage_option
def cli() -> None:
    """Operate trio_monitor job servers: run workers, enqueue and inspect jobs.

    The storage comes from --storage URL (before or after the command name)
    or TRIO_MONITOR_STORAGE. Exit status: 0 done, 1 not found or failed,
    2 usage error or bad storage URL.
    """


for command in (worker, enqueue, list_jobs, job, delete, servers, recurring, demo):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
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
