"""Fixtures for the command-line tests: the command run as a real subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.runner import Cli
from tests.jobs.storage_backends import BACKENDS, Backend
from tests.pg_cluster import PgCluster
from tests.pg_fixtures import pg_cluster, pg_url  # noqa: F401  (PostgreSQL fixtures)


@pytest.fixture(
    params=[
        pytest.param(backend, id=backend.name, marks=list(backend.marks))
        for backend in BACKENDS
        if backend.shared  # a database that several processes share
    ]
)
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    """The command on a fresh database, once per shared backend (SQLite, PostgreSQL)."""
    backend: Backend = request.param
    runner = Cli(backend.make_url(request), tmp_path)
    try:
        yield runner
    finally:
        runner.kill_workers()


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Iterator[Cli]:
    """The command on a fresh SQLite database."""
    runner = Cli(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)
    try:
        yield runner
    finally:
        runner.kill_workers()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(backend, id=backend.name, marks=list(backend.marks))
        for backend in BACKENDS
        if backend.shared
    ],
)
def shared_cli(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cli]:
    """The command on one database per module and backend (SQLite, PostgreSQL).

    For tests that keep to their own queues and jobs: one database spares a
    database (and its schema) per test.
    """
    backend: Backend = request.param
    tmp_path = tmp_path_factory.mktemp("cli")
    if backend.name == "postgres":
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        url = cluster.create_database()
    else:
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    runner = Cli(url, tmp_path)
    try:
        yield runner
    finally:
        runner.kill_workers()
        if backend.name == "postgres":
            cluster.drop_database(url.rsplit("/", 1)[1])
