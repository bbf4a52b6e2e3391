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
* **huey**: ``SqliteHuey`` (its defaults: WAL, SQLite's default
  ``synchronous=FULL``; and once more with ``synchronous=NORMAL``, like the
  others) with its consumer embedded the documented way
  (``huey.create_consumer(workers=..., worker_type="thread")``,
  ``consumer.start()``), from ``start()`` until the last task's result is
  stored (counted by a ``SIGNAL_COMPLETE`` handler, which huey sends after
  storing the result).

Rounds alternate between the systems in one process; each system's figure
is the median of its rounds, and its ratio to the floor is the median of the
per-round ratios.

    python benchmarks/bench_sqlite.py [--quick] [--jobs N] [--rounds R] [--dir D]
    python benchmarks/bench_sqlite.py --profile [--workers W] [--batch B]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import logging
import pstats
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
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


#: Job-control rows (SPEC §6): label -> feature, run with 8 workers, batch 32.
FEATURE_SETTINGS: list[tuple[str, str]] = [
    ("JobServer, 8 workers, batch 32, a lock on every job (100 keys)", "lock"),
    ("JobServer, 8 workers, batch 32, queue max_running=4", "max_running"),
]


async def server_round(
    path: Path, n: int, workers: int | None, batch: int | None, feature: str = ""
) -> float:
    async with jobs.open_storage(f"sqlite:///{path}") as storage:  # path is absolute
        if feature == "max_running":
            await jobs.Client(storage).set_queue_limits("default", max_running=4)
        locked = feature == "lock"
        for first in range(0, n, 1000):
            await storage.enqueue_many(
                [
                    jobs.Job.new("noop", {"n": i}, **({"lock": f"k{i % 100}"} if locked else {}))
                    for i in range(first, min(n, first + 1000))
                ]
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


def huey_round(path: Path, n: int, synchronous: str | None) -> float:
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
    def noop(i: int) -> int:
        return i  # huey stores no result for None (store_none=False)

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

    consumer = huey.create_consumer(workers=HUEY_WORKERS, worker_type="thread", periodic=False)
    start = time.perf_counter()
    consumer.start()
    all_done.wait()
    elapsed = time.perf_counter() - start
    consumer.stop(graceful=True)
    assert huey.result_count() == n, (huey.result_count(), n)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
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

    systems: list[tuple[str, Callable[[Path], float]]] = []
    for label, workers, batch in SERVER_SETTINGS[:2] if args.quick else SERVER_SETTINGS:
        systems.append(
            (label, lambda p, w=workers, b=batch: trio.run(server_round, p, n, w, b))  # type: ignore[misc]
        )
    if hasattr(jobs, "Client"):  # the job-control rows need SPEC §6
        for label, feature in FEATURE_SETTINGS:
            systems.append(
                (label, lambda p, f=feature: trio.run(server_round, p, n, 8, 32, f))  # type: ignore[misc]
            )
    if importlib.util.find_spec("huey") is not None:
        systems.append(
            (f"huey, {HUEY_WORKERS} threads (its defaults)", lambda p: huey_round(p, n, None))
        )
        systems.append(
            (
                f"huey, {HUEY_WORKERS} threads, synchronous=NORMAL",
                lambda p: huey_round(p, n, "NORMAL"),
            )
        )
    else:
        print("huey is not installed (pip install huey): its rows are skipped")

    raw: list[float] = []
    rates: dict[str, list[float]] = {label: [] for label, _ in systems}
    per_claim: dict[str, list[float]] = {label: [] for label, _ in systems}
    per_apply: dict[str, list[float]] = {label: [] for label, _ in systems}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp).resolve()
        for r in range(rounds):
            raw.append(raw_round(root / f"raw-{r}.db", n))
            for s, (label, run) in enumerate(systems):
                TRIPS.clear()
                rates[label].append(run(root / f"s{s}-{r}.db"))
                if TRIPS:
                    per_claim[label].append(TRIPS["claim"][1] / max(TRIPS["claim"][0], 1))
                    per_apply[label].append(TRIPS["apply"][1] / max(TRIPS["apply"][0], 1))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    print(f"\nJob server on SQLite: {n} no-op jobs per round, {rounds} round(s), files in {tmp}")
    print(
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, Trio {trio.__version__}"
    )
    width = max(len(label) for label in [*rates, "raw sqlite3"]) + 2
    print(
        f"{'system':<{width}}{'jobs/s (median)':>17}{'vs raw floor':>14}"
        f"{'jobs/claim':>12}{'jobs/apply':>12}"
    )
    print(f"{'raw sqlite3, 2 tx per job':<{width}}{statistics.median(raw):>17,.0f}{'1.00':>14}")
    for label, values in rates.items():
        ratio = statistics.median(v / f for v, f in zip(values, raw, strict=True))
        trips = (
            f"{statistics.median(per_claim[label]):>12.1f}{statistics.median(per_apply[label]):>12.1f}"
            if per_claim[label]
            else ""
        )
        print(f"{label:<{width}}{statistics.median(values):>17,.0f}{ratio:>14.2f}{trips}")


if __name__ == "__main__":
    main()
