"""pytest fixtures for a throwaway PostgreSQL cluster (see ``tests/pg_cluster.py``).

``pg_cluster``: one cluster per test session; ``pg_url``: a fresh database
per test, dropped afterwards. Where psycopg or the server binaries are
missing the fixtures skip with a message, unless
``TRIO_MONITOR_REQUIRE_POSTGRES=1`` is set, in which case they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pg_cluster import PgCluster, find_bindir

__all__ = ["pg_cluster", "pg_url", "require_postgres"]

REQUIRE_ENV = "TRIO_MONITOR_REQUIRE_POSTGRES"


def require_postgres(reason: str) -> None:
    """Skip with ``reason``, or fail if ``TRIO_MONITOR_REQUIRE_POSTGRES=1``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1 requires PostgreSQL)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the whole test session."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        require_postgres(
            "psycopg / psycopg_pool not installed (pip install trio-monitor[postgres])"
        )
    if find_bindir() is None:
        require_postgres(
            "PostgreSQL server binaries not found: install the `postgresql` package "
            "to run the PostgreSQL tests"
        )
    cluster = PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url.rsplit("/", 1)[1])
