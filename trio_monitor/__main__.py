"""``python -m trio_monitor``: the ``trio-monitor`` command.

The command needs the ``cli`` extra (Click and rich). Without it, this says
how to install it in one line instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

CLI_REQUIREMENTS = ("click", "rich")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trio-monitor`` command with ``argv``; return its exit status."""
    try:
        from trio_monitor.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name not in CLI_REQUIREMENTS:
            raise
        print(
            f"trio-monitor: the command needs {exc.name}, which is not installed: "
            "pip install 'trio-monitor[cli]'",
            file=sys.stderr,
        )
        return 1
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
