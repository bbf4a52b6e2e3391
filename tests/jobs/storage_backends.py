"""The storage backends the contract suite runs against: add new ones here.

``tests/jobs/test_storage_contract.py`` runs every test once per entry of
:data:`BACKENDS`; other test modules may import it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

__all__ = ["BACKENDS", "Backend", "backend_params"]


@dataclass(frozen=True)
class Backend:
    """One storage backend under test.

    Attributes:
      name: Test id.
      make_url: ``make_url(request)`` returns the URL of a new, empty store
        for this test (it may use fixtures through
        ``request.getfixturevalue``). Called once per test.
      shared: Whether two ``open_storage(url)`` calls on that URL see the
        same data (two processes sharing a database); tests of cross-storage
        atomicity run only where this is true.
      marks: pytest marks for this backend's tests.
    """

    name: str
    make_url: Callable[[pytest.FixtureRequest], str]
    shared: bool
    marks: Sequence[pytest.MarkDecorator] = field(default=())


def _sqlite_url(request: pytest.FixtureRequest) -> str:
    tmp_path = request.getfixturevalue("tmp_path")
    return f"sqlite:///{tmp_path / 'jobs.db'}"  # absolute: sqlite:////tmp/...


def _postgres_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_url")  # tests/pg_cluster.py: a fresh database
    return url


def _postgres_async_claims_url(request: pytest.FixtureRequest) -> str:
    # Claims that commit without waiting for their WAL flush: the contract must not change.
    return _postgres_url(request) + "?claim_synchronous_commit=off"


BACKENDS: list[Backend] = [
    Backend("memory", lambda request: "memory://", shared=False),
    Backend("sqlite", _sqlite_url, shared=True),
    Backend("postgres", _postgres_url, shared=True, marks=[pytest.mark.postgres]),
    Backend(
        "postgres-async-claims",
        _postgres_async_claims_url,
        shared=True,
        marks=[pytest.mark.postgres],
    ),
]


def backend_params() -> list[object]:
    """:data:`BACKENDS` as ``pytest.param`` s, for ``@pytest.fixture(params=...)``."""
    return [pytest.param(b, id=b.name, marks=list(b.marks)) for b in BACKENDS]
