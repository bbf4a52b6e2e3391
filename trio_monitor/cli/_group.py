"""The ``trio-monitor`` Click group; each command module adds itself with ``@cli.command()``.

A new command is one decorated function in the module of its concept
(``_worker``, ``_operator``, ``_actions``, ``_queues``, ``_migrate``,
``_demo``); :mod:`._app` imports those modules so
that their commands are registered.
"""

from __future__ import annotations

import click

from trio_monitor import __version__

from ._storage import storage_option

__all__ = ["PROG", "cli"]

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
