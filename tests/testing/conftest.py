"""Fixtures of the trio_monitor.testing suite."""

from __future__ import annotations

import pytest

from tests.jobs.storage_backends import Backend, backend_params
from tests.pg_fixtures import pg_cluster, pg_url  # noqa: F401  (PostgreSQL fixtures)


@pytest.fixture(params=backend_params())
def url(request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty storage, once per backend."""
    backend: Backend = request.param
    return backend.make_url(request)
