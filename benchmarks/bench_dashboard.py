"""Benchmark: dashboard response times with a million jobs in SQLite.

Times the overview (``/``), the jobs list (``/jobs``, first page and the
failed filter) and a job page, served in-process (httpx's ASGI transport,
no sockets) by ``create_app`` over a SQLite file holding N jobs: 90%
succeeded, 5% failed, the rest enqueued or scheduled, created over the last
two hours. Target: p95 under 100 ms.

The dashboard reads through a ``DashboardSource``. Two are timed:

* ``storage``: :class:`StorageSource`, over today's storage protocol, which
  lists oldest first and filters by state only: a newest-first page reads
  every job of that state. This is what ships until ``jobs.Client`` lands.
* ``keyset``: a stand-in for the client's listing (SPEC §6), one SQL query
  per page, ``WHERE seq < cursor ORDER BY seq DESC LIMIT n`` on the indexed
  creation order, and counts ``GROUP BY queue, state``. It shows what the
  dashboard itself costs once the client does that; re-measure with the
  client itself when it is merged.

Baseline, side by side on the same file: the queries alone in stdlib
``sqlite3`` (no decoding, no rendering).

Endpoints alternate round by round after one warm-up request each; an
endpoint whose requests take seconds gets fewer rounds (``--budget``
seconds each). Prints p50, p95, min and max.

    python benchmarks/bench_dashboard.py [--quick] [--jobs N] [--rounds R] [--dir D]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from trio_monitor import jobs

# Private: the stand-in decodes rows as the SQLite backend does.
from trio_monitor.jobs._sqlite import _JOB_COLUMNS, _job_from_row
from trio_monitor.jobs.dashboard import StorageSource, create_app

BATCH = 20_000


def _job(i: int, n: int, now: datetime) -> jobs.Job:
    created = now - timedelta(seconds=7200 * (n - i) / n)
    row = jobs.Job.new(
        ("send_email", "render_report", "charge_card")[i % 3],
        {"n": i, "to": f"user{i}@example.org"},
        ("emails", "reports", "payments", "default")[i % 4],
        now=created,
    )
    kind = i % 100
    if kind < 90:
        row.state = jobs.Succeeded({"ok": True}, 0.01)
    elif kind < 95:
        row.state = jobs.Failed("ValueError: bad input")
    elif kind < 98:
        row.state = jobs.Scheduled(now + timedelta(hours=1))
    row.attempts = 1
    return row


async def build(path: Path, n: int) -> str:
    now = datetime.now(UTC)
    last_id = ""
    async with jobs.open_storage(f"sqlite:///{path}") as storage:
        for first in range(0, n, BATCH):
            batch = [_job(i, n, now) for i in range(first, min(n, first + BATCH))]
            await storage.enqueue_many(batch)
            last_id = batch[-1].id
    return last_id


class KeysetSource(StorageSource):
    """A stand-in for ``jobs.Client``'s keyset ``list_jobs`` and ``counts`` on SQLite."""

    def __init__(self, storage: jobs.Storage, path: Path) -> None:
        super().__init__(storage)
        self._conn = sqlite3.connect(path, check_same_thread=False)
        self._limiter = trio.CapacityLimiter(1)

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        def run() -> list[Any]:
            return self._conn.execute(sql, params).fetchall()

        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    async def list_jobs(
        self,
        *,
        state: type[jobs.JobState] | None = None,
        queue: str | None = None,
        method: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[jobs.Job]:
        where, params = [], []
        for column, value in (("state", state.name if state else None), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if method is not None:
            where.append("method = ?")
            params.append(method)
        if before is not None:
            where.append("seq < (SELECT seq FROM jobs WHERE id = ?)")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs{clause} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        return [_job_from_row(row) for row in rows]

    async def counts(self) -> dict[tuple[str, str], int]:
        rows = await self._query(
            "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state", ()
        )
        return {(queue, state): n for queue, state, n in rows}


def _summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"p50 {statistics.median(ms):9.1f} ms  p95 {p95:9.1f} ms  "
        f"min {ms[0]:9.1f}  max {ms[-1]:9.1f}  (n={len(ms)})"
    )


def raw_floor(path: Path, rounds: int) -> dict[str, list[float]]:
    conn = sqlite3.connect(path)
    queries: dict[str, Callable[[], object]] = {
        "raw keyset page (50 newest)": lambda: conn.execute(
            "SELECT * FROM jobs ORDER BY seq DESC LIMIT 50"
        ).fetchall(),
        "raw failed page (50 newest)": lambda: conn.execute(
            "SELECT * FROM jobs WHERE state = 'failed' ORDER BY seq DESC LIMIT 50"
        ).fetchall(),
        "raw exact counts by queue, state": lambda: conn.execute(
            "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state"
        ).fetchall(),
    }
    times: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(rounds):
        for name, query in queries.items():
            start = time.perf_counter()
            query()
            times[name].append(time.perf_counter() - start)
    conn.close()
    return times


async def measure(
    path: Path, job_id: str, rounds: int, budget: float, keyset: bool
) -> dict[str, list[float]]:
    endpoints = {
        "GET / (overview)": "/",
        "GET /jobs (first page of 50)": "/jobs",
        "GET /jobs?state=failed": "/jobs?state=failed",
        "GET /jobs/{id} (job page)": f"/jobs/{job_id}",
    }
    times: dict[str, list[float]] = {name: [] for name in endpoints}
    spent = dict.fromkeys(endpoints, 0.0)
    async with jobs.open_storage(f"sqlite:///{path}") as storage:
        app = create_app(storage)
        if keyset:
            dashboard = app.state.dashboard
            dashboard.source = KeysetSource(storage, path)
            dashboard.counts = type(dashboard.counts)(dashboard.source.counts)
        transport = httpx.ASGITransport(app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for url in endpoints.values():  # warm-up
                assert (await client.get(url)).status_code == 200, url
            for _ in range(rounds):
                for name, url in endpoints.items():
                    if spent[name] > budget and len(times[name]) >= 3:
                        continue
                    start = time.perf_counter()
                    response = await client.get(url)
                    elapsed = time.perf_counter() - start
                    assert response.status_code == 200, (url, response.status_code)
                    times[name].append(elapsed)
                    spent[name] += elapsed
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 jobs, few rounds")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per endpoint")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    n = 20_000 if args.quick else args.jobs
    rounds = 5 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "dashboard.db"
        start = time.perf_counter()
        job_id = trio.run(build, path, n)
        print(f"built {n:,} jobs in SQLite in {time.perf_counter() - start:.1f} s")
        print(f"rounds: {rounds} per endpoint (fewer past {args.budget:g} s of requests)")
        for source in ("storage", "keyset"):
            results = trio.run(measure, path, job_id, rounds, args.budget, source == "keyset")
            for name, samples in results.items():
                print(f"{source:8} {name:36} {_summary(samples)}")
        for name, samples in raw_floor(path, rounds).items():
            print(f"{'sqlite3':8} {name:36} {_summary(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
