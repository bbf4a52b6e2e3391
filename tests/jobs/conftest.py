"""Fixtures shared by the job-server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.jobs.storage_backends import BACKENDS, Backend
from tests.pg_fixtures import pg_cluster, pg_url  # noqa: F401  (PostgreSQL fixtures)
from trio_monitor.jobs import Storage, open_storage

# -- backends the job-server tests run on -----------------------------------
# The server suites (test_server*.py, test_processor.py) take the `storage`
# fixture, which runs each test once per backend named here. A backend is
# defined in tests/jobs/storage_backends.py (BACKENDS); to run the server
# suites on it too, add its name to this tuple (e.g. "postgres").
SERVER_BACKENDS: tuple[str, ...] = ("memory", "sqlite", "postgres")


def _server_backend_params() -> list[object]:
    return [
        pytest.param(backend, id=backend.name, marks=list(backend.marks))
        for backend in BACKENDS
        if backend.name in SERVER_BACKENDS
    ]


@pytest.fixture(params=_server_backend_params())
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    """A new, empty storage, once per backend of :data:`SERVER_BACKENDS`.

    Backends other than memory talk to threads: tests using this fixture run
    on the real clock with short intervals (MockClock would autojump while a
    storage call waits on its thread).
    """
    backend: Backend = request.param
    async with open_storage(backend.make_url(request)) as opened:
        yield opened


@pytest.fixture
async def memory_storage() -> AsyncIterator[Storage]:
    """A memory storage, for tests that drive time with ``autojump_clock``."""
    async with open_storage("memory://") as opened:
        yield opened
