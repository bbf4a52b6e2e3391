"""The pytest plugin of :mod:`trio_monitor.testing` (entry point ``pytest11``).

Installed with trio_monitor, it gives every test suite:

* ``job_workers``: the :class:`~trio_monitor.jobs.WorkerRegistry` under
  test. Override it in your ``conftest.py``.
* ``job_server``: a :class:`~trio_monitor.testing.TestServer` running your
  workers, in virtual time: the test must also take pytest-trio's
  ``autojump_clock`` (pytest-trio picks the run's clock from the test's
  own arguments), or the fixture refuses with a message saying so.
* ``job_client``: its client, for enqueueing.
* ``job_storage_url`` (default ``memory://``) and ``job_server_options``
  (keyword arguments for :func:`~trio_monitor.testing.open_test_server`;
  default none), to override.
* The marker ``@pytest.mark.job_storage(url)`` picks the storage of one
  test (or a module, with ``pytestmark``); ``"sqlite"`` means a fresh
  SQLite file in the test's ``tmp_path``. The option ``--job-storage=URL``
  sets the default for the whole run (run a suite once on ``memory://``
  and once on ``sqlite``). ``job_storage_url`` also takes indirect
  parametrization: ``@pytest.mark.parametrize("job_storage_url",
  ["memory://", "sqlite"], indirect=True)``.

The async fixtures need pytest-trio (``trio_mode = true`` or
``@pytest.mark.trio`` tests).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from ..jobs import WorkerRegistry
from ._server import TestServer, open_test_server

__all__ = [
    "job_client",
    "job_server",
    "job_server_options",
    "job_storage_url",
    "job_workers",
]

_MARKER = "job_storage"
#: The storage URL shorthand for a fresh SQLite file in ``tmp_path``.
_SQLITE = "sqlite"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Adds ``--job-storage=URL``."""
    parser.addoption(
        "--job-storage",
        default="memory://",
        help="storage URL of the job_server fixture (default memory://; "
        "'sqlite' for a fresh SQLite file per test)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declares the ``job_storage`` marker."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(url): storage URL of the job_server fixture "
        f"(memory://, {_SQLITE!r} for a fresh SQLite file, or any storage URL)",
    )


@pytest.fixture
def job_workers() -> WorkerRegistry:
    """The workers under test: override this fixture to return your registry."""
    raise pytest.UsageError(
        "the job_server fixture runs the workers of the job_workers fixture: define "
        "`@pytest.fixture def job_workers(): return my_app.workers` in your conftest.py"
    )


@pytest.fixture
def job_storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage URL: parametrized, else the ``job_storage`` marker, else ``--job-storage``."""
    url = getattr(request, "param", None)
    if url is None:
        marker = request.node.get_closest_marker(_MARKER)
        if marker is not None:
            if len(marker.args) != 1 or not isinstance(marker.args[0], str):
                raise pytest.UsageError(
                    f"@pytest.mark.{_MARKER} takes one storage URL, got {marker.args!r}"
                )
            url = marker.args[0]
        else:
            url = request.config.getoption("--job-storage")
    if url == _SQLITE:
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert isinstance(url, str)
    return url


@pytest.fixture
def job_server_options() -> dict[str, Any]:
    """Keyword arguments for :func:`open_test_server` (``config``, ``retry_policy``...)."""
    return {}


@pytest.fixture
async def job_server(
    job_workers: WorkerRegistry,
    job_storage_url: str,
    job_server_options: dict[str, Any],
) -> AsyncGenerator[TestServer, None]:
    """A running test server for ``job_workers``, in virtual time.

    The test must run under a :class:`~trio.testing.MockClock`: request
    pytest-trio's ``autojump_clock`` in its arguments (pytest-trio takes the
    run's clock from the test's own arguments only, so a fixture cannot
    choose it).
    """
    if not isinstance(trio.lowlevel.current_clock(), MockClock):
        raise pytest.UsageError(
            "the job_server fixture runs in virtual time: add pytest-trio's "
            "autojump_clock to the test's arguments "
            "(async def test_x(job_server, autojump_clock): ...)"
        )
    async with open_test_server(job_workers, job_storage_url, **job_server_options) as server:
        yield server


@pytest.fixture
def job_client(job_server: TestServer) -> Any:
    """The client of ``job_server``."""
    return job_server.client
