"""Shared test configuration.

pytest-trio runs in trio mode (``trio_mode = true`` in pyproject.toml), so
async tests need no marker; its ``autojump_clock`` fixture drives timing
tests. The PostgreSQL fixtures live in ``tests/pg_cluster.py`` and are made
available where needed (``tests/jobs/conftest.py``). Soak tests carry the
``soak`` marker and run only under ``nox -s soak``.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # trio_monitor.testing's pytest plugin comes in through its pytest11 entry
    # point once trio_monitor is installed; the suite runs from the source tree
    # (PYTHONPATH=.), so register it here unless the entry point already did.
    from trio_monitor.testing import pytest_plugin

    if not config.pluginmanager.is_registered(pytest_plugin):
        config.pluginmanager.register(pytest_plugin, "trio_monitor")
