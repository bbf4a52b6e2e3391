"""Soak test: two job-server processes on one SQLite file, SIGKILLed over and over.

1,000 short jobs; two servers (``tests/jobs/crash_worker.py``, heartbeats
on) work them while, every 0.1-0.5 s, one of the two (at random, among those
that have started) is killed with SIGKILL and a new one is started in its
place, up to :data:`KILLS` times, until every job is terminal. Every job
must end ``Succeeded`` and no job may ever have run on two workers at the
same time; a job may run again after the process running it was killed
(at-least-once), which the test counts and prints.

Run with ``nox -s soak`` (or ``pytest -m soak tests -s`` to see the numbers);
the default test run leaves it out.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

from tests.jobs.crash_worker import assert_never_concurrent, read_runs
from tests.jobs.test_crash import open_fleet, sqlite_url
from trio_monitor import jobs

pytestmark = pytest.mark.soak

JOBS = 1_000
KILLS = 100
SERVERS = 2
WORKERS_PER_SERVER = 4
#: High enough that no job is given up for dying with its servers: a job
#: claimed first can be hit by several kills in a row.
MAX_ATTEMPTS = 100
TIME_LIMIT = 300.0


@pytest.fixture(autouse=True)
def _only_when_selected(request: pytest.FixtureRequest) -> None:
    # A plain `pytest` run selects every test; this one takes a minute.
    if "soak" not in str(request.config.getoption("markexpr", "")):
        pytest.skip("soak test: run it with `nox -s soak` or `pytest -m soak tests`")


async def test_kill_and_restart_servers_until_every_job_is_done(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    db = tmp_path / "jobs.db"
    options = [
        "--heartbeat",
        "--workers",
        str(WORKERS_PER_SERVER),
        "--max-attempts",
        str(MAX_ATTEMPTS),
        "--name",
        "soak",
    ]
    async with jobs.open_storage(sqlite_url(db)) as storage, open_fleet(tmp_path, db) as fleet:
        batch = [
            jobs.Job.new("record", {"n": n, "sleep": rng.uniform(0.05, 0.25)}) for n in range(JOBS)
        ]
        ids = await storage.enqueue_many(batch)
        started = time.monotonic()
        for _ in range(SERVERS):
            await fleet.spawn(*options)
        kills = 0
        with trio.fail_after(TIME_LIMIT):
            while True:
                counts = await storage.count_by_state()
                if sum(counts.get(s, 0) for s in ("succeeded", "failed")) == JOBS:
                    break
                await trio.sleep(rng.uniform(0.1, 0.5))
                for proc in list(fleet.live.values()):
                    assert proc.poll() is None, f"server {proc.pid} died by itself:\n{fleet.log()}"
                ready = [proc for proc in fleet.live.values() if fleet.identity(proc) is not None]
                if kills < KILLS and ready:
                    await fleet.kill(rng.choice(ready))
                    kills += 1
                    await fleet.spawn(*options)
        elapsed = time.monotonic() - started
        await fleet.kill_all()

        stored = [await storage.get(job_id) for job_id in ids]
        assert all(job is not None for job in stored)
        states = Counter(type(job.state).__name__ for job in stored if job is not None)
        assert states == {"Succeeded": JOBS}, states
        results = [getattr(job.state, "result", None) for job in stored if job is not None]
        assert results == list(range(JOBS))

        runs = read_runs(fleet.runs_dir)
        assert_never_concurrent(runs, fleet.deaths)
        runs_per_job = Counter(run.job_id for run in runs)
        assert set(runs_per_job) == set(ids), "a job succeeded without a recorded run"
        killed_runs = sum(run.end is None for run in runs)
        rerun_jobs = sum(count > 1 for count in runs_per_job.values())
        extra_runs = len(runs) - JOBS
        attempts = Counter(job.attempts for job in stored if job is not None)
        # Each job has a finished run (the one that succeeded), and was claimed
        # at least once per run.
        assert {run.job_id for run in runs if run.end is not None} == set(ids)
        for job in stored:
            assert job is not None
            assert job.attempts >= runs_per_job[job.id]
        print(
            f"\nsoak: {JOBS} jobs, {kills} kills, {len(fleet.deaths)} processes killed in all, "
            f"{elapsed:.1f} s; {len(runs)} runs ({extra_runs} re-runs, {killed_runs} cut short "
            f"by a kill) over {rerun_jobs} jobs run more than once; "
            f"attempts per job: {dict(sorted(attempts.items()))}"
        )
        if kills < KILLS:
            pytest.fail(f"the jobs were done after {kills} kills, before {KILLS}: make them longer")
