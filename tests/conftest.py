"""Shared test configuration.

pytest-trio runs in trio mode (``trio_mode = true`` in pyproject.toml), so
async tests need no marker; its ``autojump_clock`` fixture drives timing
tests. The PostgreSQL fixtures live in ``tests/pg_cluster.py`` and are made
available where needed (``tests/jobs/conftest.py``). Soak tests carry the
``soak`` marker and run only under ``nox -s soak``.
"""
