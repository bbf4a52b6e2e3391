"""Benchmark: dashboard response times with a million jobs in SQLite and PostgreSQL.

Times the overview (``/``), the jobs list (``/jobs``, first page and the
failed filter) and a job page, served in-process (httpx's ASGI transport,
no sockets) by ``create_app`` over a database holding N jobs: 90%
succeeded, 5% failed, the rest enqueued or scheduled, created over the last
two hours, in four queues. Target: p95 under 100 ms.

The dashboard reads through a ``DashboardSource``. Two are timed:

* ``storage``: what ships, ``jobs.Client`` over the storage (the app's
  default source).
* ``keyset``: a hand-written stand-in for a keyset listing, one SQL query
  per page, ``WHERE seq < cursor ORDER BY seq DESC LIMIT n`` on the
  creation order, and counts ``GROUP BY queue, state``: what the
  dashboard itself costs over the cheapest listing. On PostgreSQL the stand-in first adds
  the indexes such a listing needs (``(seq)`` and ``(state, seq)``; today's
  schema has only partial ones), as the client's schema must.

Baseline, side by side on the same database: the queries alone (stdlib
``sqlite3`` or psycopg; no decoding, no rendering).

The app runs as ``trio-monitor dashboard`` runs it: its lifespan is on, so
costly readings (counts above 100,000 jobs, a full chart sample) are
refreshed by a background task. Endpoints alternate round by round after one
warm-up request each, with ``--interval`` seconds between rounds (a browser
polls every two seconds), so the run spans several background recounts; an
endpoint whose requests take seconds gets fewer rounds (``--budget`` seconds
each, at least 3). Prints p50, p95, min and max.

    python benchmarks/bench_dashboard.py [--quick] [--jobs N] [--rounds R]
        [--backends sqlite,postgres] [--dir D]
"""

from __future__ import annotations

import contextlib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio
from _harness import arguments, machine

from trio_monitor import jobs
from trio_monitor.jobs.dashboard import create_app

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 20_000
Query = Callable[[str, Sequence[object]], list[Any]]


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


async def build(url: str, n: int) -> str:
    now = datetime.now(UTC)
    last_id = ""
    async with jobs.open_storage(url) as storage:
        for first in range(0, n, BATCH):
            batch = [_job(i, n, now) for i in range(first, min(n, first + BATCH))]
            await storage.enqueue_many(batch)
            last_id = batch[-1].id
    return last_id


class Backend:
    """How to reach one database with raw SQL, and decode its job rows."""

    def __init__(
        self, name: str, url: str, query: Query, table: str, mark: str, decode: Any, columns: str
    ) -> None:
        self.name, self.url, self.query = name, url, query
        self.table, self.mark, self.decode, self.columns = table, mark, decode, columns


class KeysetSource(jobs.Client):
    """``jobs.Client`` with hand-written keyset ``list_jobs`` and ``counts``."""

    def __init__(self, storage: jobs.Storage, backend: Backend) -> None:
        super().__init__(storage)
        self._backend = backend
        self._limiter = trio.CapacityLimiter(1)

    async def _query(self, sql: str, params: Sequence[object]) -> list[Any]:
        return await trio.to_thread.run_sync(
            self._backend.query, sql, params, limiter=self._limiter
        )

    async def list_jobs(
        self,
        *,
        state: type[jobs.JobState] | None = None,
        queue: str | None = None,
        method: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[jobs.Job]:
        b = self._backend
        where: list[str] = []
        params: list[object] = []
        for column, value in (
            ("state", state.name if state else None),
            ("queue", queue),
            ("method", method),
        ):
            if value is not None:
                where.append(f"{column} = {b.mark}")
                params.append(value)
        if before is not None:
            where.append(f"seq < (SELECT seq FROM {b.table} WHERE id = {b.mark})")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {b.columns} FROM {b.table}{clause} ORDER BY seq DESC LIMIT {b.mark}"
        return [b.decode(row) for row in await self._query(sql, [*params, limit])]

    async def counts(self) -> dict[tuple[str, str], int]:
        sql = f"SELECT queue, state, count(*) FROM {self._backend.table} GROUP BY queue, state"
        return {(queue, state): n for queue, state, n in await self._query(sql, ())}


class _PerThread:
    """One connection per worker thread: reads run in parallel, as a pool's would."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._all:
            conn.close()


@contextlib.contextmanager
def sqlite_backend(workdir: Path) -> Iterator[Backend]:
    # Private: the stand-in decodes rows as the SQLite backend does.
    from trio_monitor.jobs._backends._rows import JOB_COLUMNS
    from trio_monitor.jobs._backends._sqlite._storage import _job

    path = workdir / "dashboard.db"
    connections = _PerThread(lambda: sqlite3.connect(path, check_same_thread=False))

    def query(sql: str, params: Sequence[object]) -> list[Any]:
        return connections.get().execute(sql, tuple(params)).fetchall()

    try:
        yield Backend("sqlite", f"sqlite:///{path}", query, "jobs", "?", _job, JOB_COLUMNS)
    finally:
        connections.close()


@contextlib.contextmanager
def postgres_backend(workdir: Path) -> Iterator[Backend]:
    import psycopg

    from tests.pg_cluster import PgCluster
    from trio_monitor.jobs._backends._postgres._schema import JOBS
    from trio_monitor.jobs._backends._postgres._storage import _job
    from trio_monitor.jobs._backends._rows import JOB_COLUMNS

    with PgCluster.start() as cluster:
        url = cluster.create_database("bench_dashboard")
        connections = _PerThread(lambda: psycopg.connect(url, autocommit=True))

        def query(sql: str, params: Sequence[object]) -> list[Any]:
            cursor = connections.get().execute(sql.encode(), tuple(params))
            return cursor.fetchall() if cursor.description is not None else []

        try:
            yield Backend("postgres", url, query, JOBS, "%s", _job, JOB_COLUMNS)
        finally:
            connections.close()


def _summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"p50 {statistics.median(ms):9.1f} ms  p95 {p95:9.1f} ms  "
        f"min {ms[0]:9.1f}  max {ms[-1]:9.1f}  (n={len(ms)})"
    )


def raw_floor(backend: Backend, rounds: int) -> dict[str, list[float]]:
    t, m = backend.table, backend.mark
    queries = {
        "raw keyset page (50 newest)": (f"SELECT * FROM {t} ORDER BY seq DESC LIMIT 50", ()),
        "raw failed page (50 newest)": (
            f"SELECT * FROM {t} WHERE state = {m} ORDER BY seq DESC LIMIT 50",
            ("failed",),
        ),
        "raw exact counts by queue, state": (
            f"SELECT queue, state, count(*) FROM {t} GROUP BY queue, state",
            (),
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(rounds):
        for name, (sql, params) in queries.items():
            start = time.perf_counter()
            backend.query(sql, params)
            times[name].append(time.perf_counter() - start)
    return times


async def measure(
    backend: Backend, job_id: str, rounds: int, budget: float, interval: float, keyset: bool
) -> dict[str, list[float]]:
    endpoints = {
        "GET / (overview)": "/",
        "GET /jobs (first page of 50)": "/jobs",
        "GET /jobs?state=failed": "/jobs?state=failed",
        "GET /jobs/{id} (job page)": f"/jobs/{job_id}",
    }
    times: dict[str, list[float]] = {name: [] for name in endpoints}
    spent = dict.fromkeys(endpoints, 0.0)
    async with jobs.open_storage(backend.url) as storage:
        app = create_app(storage)
        if keyset:
            # Swap the source the app reads through.
            app.state.dashboard.use_source(KeysetSource(storage, backend))
        transport = httpx.ASGITransport(app, client=("127.0.0.1", 1))
        # As served by `trio-monitor dashboard`: the lifespan runs the background refresher.
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
        ):
            for url in endpoints.values():  # warm-up
                assert (await client.get(url)).status_code == 200, url
            for _ in range(rounds):
                await trio.sleep(interval)  # a browser polls every couple of seconds
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


def run_backend(
    backend: Backend, n: int, rounds: int, budget: float, interval: float, sources: str
) -> None:
    start = time.perf_counter()
    job_id = trio.run(build, backend.url, n)
    print(f"{backend.name}: built {n:,} jobs in {time.perf_counter() - start:.1f} s")
    results: dict[str, dict[str, list[float]]] = {}
    if "storage" in sources:
        results["storage"] = trio.run(measure, backend, job_id, rounds, budget, interval, False)
    if backend.name == "postgres":
        for columns in ("seq", "state, seq"):
            backend.query(f"CREATE INDEX ON {backend.table} ({columns})", ())
        backend.query(f"ANALYZE {backend.table}", ())
    results["keyset"] = trio.run(measure, backend, job_id, rounds, budget, interval, True)
    results["raw"] = raw_floor(backend, rounds)
    for source, timings in results.items():
        for name, samples in timings.items():
            print(f"  {source:8} {name:36} {_summary(samples)}")


def main() -> int:
    parser = arguments((__doc__ or "").splitlines()[0], rounds=30)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per endpoint")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between rounds (polling)"
    )
    parser.add_argument("--sources", default="storage,keyset", help="storage (jobs.Client), keyset")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()  # --plot is accepted; this benchmark draws no chart
    n = 20_000 if args.quick else args.jobs
    rounds = 5 if args.quick else args.rounds
    interval = 0.1 if args.quick else args.interval
    print(machine())
    print(f"rounds: {rounds} per endpoint (at least 3; fewer past {args.budget:g} s of requests)")
    makers = {"sqlite": sqlite_backend, "postgres": postgres_backend}
    for name in args.backends.split(","):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.ExitStack() as stack:
            try:
                backend = stack.enter_context(makers[name](Path(tmp)))
            except (ImportError, RuntimeError) as exc:
                print(f"{name}: skipped ({exc})")
                continue
            run_backend(backend, n, rounds, args.budget, interval, args.sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
