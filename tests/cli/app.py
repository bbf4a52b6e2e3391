"""Workers the command-line tests run in real worker processes (``tests.cli.app:workers``)."""

from __future__ import annotations

import os

import trio

from trio_monitor import jobs

workers = jobs.WorkerRegistry()
not_a_registry = {"add": None}

#: Overrides the sleep of ``slow`` jobs (a second worker finishes them at once).
SLOW_ENV = "TRIO_MONITOR_TEST_SLOW_SECONDS"


@workers.worker("add")
async def add(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    return job.payload["a"] + job.payload["b"]


@workers.worker("fail")
async def fail(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    raise ValueError(f"refused {job.payload!r}")


@workers.worker("slow")
async def slow(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(float(os.environ.get(SLOW_ENV, "600")))
    return "slept"
