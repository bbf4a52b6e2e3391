"""The pytest plugin's fixtures and marker, run in a fresh pytest with pytester."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

PLUGIN = "trio_monitor.testing.pytest_plugin"
#: Installed, the package's pytest11 entry point loads the plugin in every
#: pytest run; from a source tree it must be asked for.
LOAD_PLUGIN = (
    [] if any(ep.value == PLUGIN for ep in entry_points(group="pytest11")) else ["-p", PLUGIN]
)

CONFTEST = """
import pytest
import trio
from trio_monitor import jobs

workers = jobs.WorkerRegistry()

@workers.worker("greet")
async def greet(job, ctx):
    return f"hello {job.payload}"

@pytest.fixture
def job_workers():
    return workers
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makeconftest(CONFTEST)
    return pytester.runpytest(*LOAD_PLUGIN, "-p", "no:cacheprovider", *args)


def test_job_server_and_job_client_in_virtual_time(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        import trio
        from trio_monitor import jobs, testing

        async def test_greet(job_server, job_client, job_storage_url, autojump_clock):
            assert job_storage_url == "memory://"
            assert job_client is job_server.client
            start, wall = trio.current_time(), time.perf_counter()
            job_id = await job_client.enqueue("greet", "ann", delay=86400)
            await job_server.drain()
            job = await job_server.storage.get(job_id)
            assert job.state.result == "hello ann"
            assert trio.current_time() - start >= 86400
            assert time.perf_counter() - wall < 5
            testing.assert_enqueued(job_client, "greet", count=1)
        """
    )
    _run(pytester).assert_outcomes(passed=1)


def test_the_marker_the_option_and_parametrization_pick_the_storage(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        async def check(job_server, job_client):
            job_id = await job_client.enqueue("greet", "bob", delay=60)
            await job_server.drain()
            job = await job_server.storage.get(job_id)
            assert job.state.result == "hello bob"
            return type(job_server.storage.wrapped).__name__

        @pytest.mark.job_storage("sqlite")
        async def test_marker(job_server, job_client, job_storage_url, autojump_clock):
            assert job_storage_url.startswith("sqlite:////")
            assert await check(job_server, job_client) == "SQLiteStorage"

        @pytest.mark.parametrize("job_storage_url", ["memory://", "sqlite"], indirect=True)
        async def test_param(job_server, job_client, job_storage_url, autojump_clock):
            name = await check(job_server, job_client)
            assert name == ("MemoryStorage" if job_storage_url == "memory://" else "SQLiteStorage")

        async def test_default(job_server, job_client, autojump_clock):
            await check(job_server, job_client)
        """
    )
    _run(pytester).assert_outcomes(passed=4)
    _run(pytester, "--job-storage=sqlite", "-k", "default").assert_outcomes(passed=1)


def test_the_marker_is_declared(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    result = pytester.runpytest(*LOAD_PLUGIN, "--markers")
    result.stdout.fnmatch_lines(["*job_storage(url)*"])


def test_job_server_without_a_mock_clock_says_what_to_add(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        async def test_no_clock(job_server):
            pass
        """
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)  # pytest-trio reports async fixture errors as failures
    result.stdout.fnmatch_lines(["*add pytest-trio's autojump_clock to the test's arguments*"])


def test_job_workers_must_be_defined(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        """
        async def test_forgot(job_server, autojump_clock):
            pass
        """
    )
    result = pytester.runpytest(*LOAD_PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define*job_workers*conftest.py*"])
