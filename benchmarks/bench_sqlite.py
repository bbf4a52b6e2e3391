"""Benchmark: the job server on SQLite against the raw sqlite3 floor and huey.

What one round measures, for each system, on a new database file holding N
enqueued no-op jobs (enqueueing is not timed):

* **raw floor**: one thread, no Trio, stdlib ``sqlite3``, WAL,
  ``synchronous=NORMAL``, an index on ``(state, id)``; per job one claim
  transaction (``UPDATE jobs SET state='processing' WHERE id = (SELECT id
  FROM jobs WHERE state='enqueued' ORDER BY id LIMIT 1) RETURNING id,
  payload``) and one completion transaction. No job server at all.
* **JobServer**: ``trio_monitor.jobs.JobServer`` on ``sqlite:///...`` with a
  no-op async worker, from ``nursery.start(server.run)`` until the last
  ``Succeeded`` is written (counted by an ``on_state_change`` hook), with
  the default :class:`~trio_monitor.jobs.ServerConfig` and with more workers
  and bigger claim batches.
* **huey**: ``SqliteHuey`` with its consumer embedded the documented way
  (``huey.create_consumer(workers=..., worker_type="thread")``,
  ``consumer.start()``), from ``start()`` until the last task has run
  (counted by a ``SIGNAL_COMPLETE`` handler). Its task returns nothing, like
  the job server's worker (so huey stores no result). Two rows:

  * **matched**: 8 threads against the JobServer's 8 workers, WAL and
    ``synchronous=NORMAL`` like the floor and the job server;
  * **default vs default**: huey's own defaults (1 worker thread, WAL,
    SQLite's default ``synchronous=FULL``: an fsync per commit) against the
    JobServer's defaults. Labelled as such; it compares out-of-the-box
    behaviour, not equal work.

One warm-up of every system, then rounds in an order rotated each round, in
one process, a fresh database file per run; each figure is the median of
its rounds (with their range), and each ratio to the floor the median of the
per-round ratios.

    python benchmarks/bench_sqlite.py [--quick] [--jobs N] [--rounds R] [--dir D] [--plot]
    python benchmarks/bench_sqlite.py --profile [--workers W] [--batch B]
"""

from __future__ import annotations

import cProfile
import importlib.util
import io
import itertools
import logging
import pstats
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from _harness import alternate, arguments, bar_chart, collect, machine, table
from _sqlite_floor import raw_round

from trio_monitor import jobs

#: (label, worker_count, fetch_batch_size); None: the ServerConfig default.
SERVER_SETTINGS: list[tuple[str, int | None, int | None]] = [
    ("JobServer, defaults (5 workers, batch 10)", None, None),
    ("JobServer, 8 workers, batch 32", 8, 32),
    ("JobServer, 16 workers, batch 32", 16, 32),
    ("JobServer, 32 workers, batch 32", 32, 32),
    ("JobServer, 64 workers, batch 64", 64, 64),
]
HUEY_WORKERS = 8
MATCHED_HUEY = f"huey, {HUEY_WORKERS} threads, synchronous=NORMAL (matched)"
DEFAULT_HUEY = "huey, its defaults: 1 thread, synchronous=FULL (default vs default)"


# -- the job server -----------------------------------------------------------

WORKERS = jobs.WorkerRegistry()


@WORKERS.worker("noop")
async def noop(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    return None


def server_config(workers: int | None, batch: int | None) -> jobs.ServerConfig:
    options: dict[str, Any] = {"server_name": "bench"}
    if workers is not None:
        options["worker_count"] = workers
    if batch is not None:
        options["fetch_batch_size"] = batch
    return jobs.ServerConfig(**options)


#: Storage round trips of the last server round: method -> [calls, jobs].
TRIPS: dict[str, list[int]] = {}


def count_trips(storage: Any) -> None:
    """Count ``claim`` and ``apply`` calls (and the jobs they carry) on ``storage``."""
    TRIPS.clear()
    claim, apply = storage.claim, storage.apply
    TRIPS["claim"] = claims = [0, 0]
    TRIPS["apply"] = applies = [0, 0]

    async def counted_claim(**kwargs: Any) -> list[jobs.Job]:
        got: list[jobs.Job] = await claim(**kwargs)
        claims[0] += 1
        claims[1] += len(got)
        return got

    async def counted_apply(transitions: Any) -> Any:
        applies[0] += 1
        applies[1] += len(transitions)
        return await apply(transitions)

    storage.claim, storage.apply = counted_claim, counted_apply


async def server_round(path: Path, n: int, workers: int | None, batch: int | None) -> float:
    async with jobs.open_storage(f"sqlite:///{path}") as storage:  # path is absolute
        for first in range(0, n, 1000):
            await storage.enqueue_many(
                [jobs.Job.new("noop", {"n": i}) for i in range(first, min(n, first + 1000))]
            )
        count_trips(storage)
        all_done = trio.Event()
        succeeded = 0

        def count(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
            nonlocal succeeded
            if isinstance(new, jobs.Succeeded):
                succeeded += 1
                if succeeded == n:
                    all_done.set()

        server = jobs.JobServer(
            server_config(workers, batch), storage, WORKERS, on_state_change=count
        )
        async with trio.open_nursery() as nursery:
            start = time.perf_counter()
            await nursery.start(server.run)
            await all_done.wait()
            elapsed = time.perf_counter() - start
            await server.stop()
        assert await storage.count_by_state() == {"succeeded": n}
    return n / elapsed


# -- huey -----------------------------------------------------------------------


def huey_round(path: Path, n: int, workers: int, synchronous: str | None) -> float:
    from huey import SqliteHuey, signals  # type: ignore[import-untyped]

    class Huey(SqliteHuey):  # type: ignore[misc]
        def get_storage(self, **kwargs: Any) -> Any:
            storage = super().get_storage(**kwargs)
            if synchronous is not None:
                create = storage._create_connection

                def create_connection() -> sqlite3.Connection:
                    conn: sqlite3.Connection = create()
                    conn.execute(f"PRAGMA synchronous = {synchronous}")
                    return conn

                storage._create_connection = create_connection
            return storage

    huey = Huey("bench", filename=str(path))

    @huey.task()  # type: ignore[untyped-decorator]
    def noop(i: int) -> None:
        # Returns nothing, like the job server's worker: huey then stores no
        # result (store_none=False); SIGNAL_COMPLETE still marks the end.
        pass

    for i in range(n):
        noop(i)
    lock = threading.Lock()
    completed = 0
    all_done = threading.Event()

    @huey.signal(signals.SIGNAL_COMPLETE)  # type: ignore[untyped-decorator]
    def on_complete(signal: str, task: Any) -> None:
        nonlocal completed
        with lock:
            completed += 1
            if completed == n:
                all_done.set()

    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False)
    start = time.perf_counter()
    consumer.start()
    all_done.wait()
    elapsed = time.perf_counter() - start
    consumer.stop(graceful=True)
    assert completed == n, (completed, n)
    assert huey.pending_count() == 0, huey.pending_count()
    huey.storage.close()
    return n / elapsed


# -- driver -----------------------------------------------------------------------


def profile(directory: str | None, n: int, workers: int | None, batch: int | None) -> None:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        root = Path(tmp).resolve()
        trio.run(server_round, root / "warm.db", n, workers, batch)
        profiler = cProfile.Profile()
        rate = profiler.runcall(trio.run, server_round, root / "p.db", n, workers, batch)
    print(f"JobServer, {n} jobs, workers={workers}, batch={batch}: {rate:,.0f} jobs/s (profiled)")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    print(out.getvalue())


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per round (default 5000)")
    parser.add_argument("--dir", default=None, help="where the database files go (default: temp)")
    parser.add_argument("--profile", action="store_true", help="cProfile one JobServer round")
    parser.add_argument("--workers", type=int, default=None, help="--profile: worker_count")
    parser.add_argument("--batch", type=int, default=None, help="--profile: fetch_batch_size")
    args = parser.parse_args()
    n = args.jobs or (500 if args.quick else 5_000)
    rounds = args.rounds or (1 if args.quick else 5)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("huey").setLevel(logging.ERROR)
    if args.profile:
        profile(args.dir, n, args.workers, args.batch)
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp).resolve()
        files = itertools.count()

        def fresh() -> Path:
            return root / f"{next(files)}.db"

        systems: dict[str, Callable[[], float]] = {
            "raw sqlite3, 2 tx per job": lambda: raw_round(fresh(), n)
        }
        for label, workers, batch in SERVER_SETTINGS[:2] if args.quick else SERVER_SETTINGS:
            systems[label] = lambda w=workers, b=batch: trio.run(server_round, fresh(), n, w, b)
        with_huey = importlib.util.find_spec("huey") is not None
        if with_huey:
            systems[MATCHED_HUEY] = lambda: huey_round(fresh(), n, HUEY_WORKERS, "NORMAL")
            systems[DEFAULT_HUEY] = lambda: huey_round(fresh(), n, 1, None)
        else:
            print("huey is not installed (pip install huey): its rows are skipped")
        trips: dict[str, list[tuple[float, float]]] = {}

        def with_trips(label: str, run: Callable[[], float]) -> Callable[[], float]:
            def measured() -> float:
                TRIPS.clear()
                rate = run()
                if TRIPS:
                    trips.setdefault(label, []).append(
                        (
                            TRIPS["claim"][1] / max(TRIPS["claim"][0], 1),
                            TRIPS["apply"][1] / max(TRIPS["apply"][0], 1),
                        )
                    )
                return rate

            return measured

        results = alternate(
            {label: with_trips(label, run) for label, run in systems.items()},
            rounds,
            progress=True,
        )
    rates = collect(results, float)

    print(f"\nJob server on SQLite: {n} no-op jobs per round, {rounds} round(s) after a warm-up")
    print(f"{machine()}; SQLite {sqlite3.sqlite_version}, Trio {trio.__version__}")
    print(
        "Matched durability: raw floor, JobServer and the matched huey row all run WAL with "
        "synchronous=NORMAL.\nDefault vs default: huey's own defaults (1 worker, "
        "synchronous=FULL) against the JobServer's (5 workers, batch 10)."
    )
    print(table(rates, unit="jobs/s", spec=",.0f", baselines=["raw sqlite3, 2 tx per job"]))
    for label, per in trips.items():
        claim = statistics.median(c for c, _ in per)
        apply = statistics.median(a for _, a in per)
        print(f"{label}: {claim:.1f} jobs per claim, {apply:.1f} per apply (median)")
    if with_huey:
        matched = rates.ratios("JobServer, 8 workers, batch 32", MATCHED_HUEY)
        default = rates.ratios(SERVER_SETTINGS[0][0], DEFAULT_HUEY)
        print(
            f"JobServer / huey, matched (8 workers, NORMAL): {statistics.median(matched):.2f} "
            f"({min(matched):.2f}-{max(matched):.2f}); default vs default: "
            f"{statistics.median(default):.2f} ({min(default):.2f}-{max(default):.2f})"
        )
    if args.plot:
        bar_chart(
            "sqlite_throughput",
            f"{n:,} no-op jobs on SQLite (WAL)",
            rates,
            label="jobs per second (median, range)",
        )


if __name__ == "__main__":
    main()
