"""Test your workers against the real job server, in virtual time.

Under :class:`trio.testing.MockClock` (pytest-trio's ``autojump_clock``),
:func:`open_test_server` runs a real :class:`~trio_monitor.jobs.JobServer`
whose delays, retries, backoffs and cron take no wall time, on ``memory://``
and on SQLite alike. :func:`run_job` runs one job inline;
:func:`assert_enqueued` checks what was enqueued. The pytest plugin
(:mod:`trio_monitor.testing.pytest_plugin`) wraps them in fixtures. For
the supervisor, :class:`FailOnDemand` makes a child fail when a test says
so, and :func:`assert_restarts` checks restart counts.
"""

from .._public import document_as_public
from ._recording import RecordingStorage, assert_enqueued
from ._run_job import run_job
from ._server import DrainStalled, TestServer, open_test_server
from ._supervisor import ChildFailure, FailOnDemand, assert_restarts

__all__ = [
    "ChildFailure",
    "DrainStalled",
    "FailOnDemand",
    "RecordingStorage",
    "TestServer",
    "assert_enqueued",
    "assert_restarts",
    "open_test_server",
    "run_job",
]

document_as_public(globals(), __all__, __name__)
