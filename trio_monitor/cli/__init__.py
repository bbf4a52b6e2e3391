"""The ``trio-monitor`` command (also ``python -m trio_monitor``).

Needs the ``cli`` extra (``pip install 'trio-monitor[cli]'``): Click for the
commands, rich for tables and progress. ``main(argv)`` runs it and returns
the exit status; ``cli`` is the Click group, for embedding or testing with
``click.testing.CliRunner``.
"""

from ._app import cli, main

__all__ = ["cli", "main"]
