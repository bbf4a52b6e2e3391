"""Benchmark: the SQLite job storage's claim + apply against raw stdlib sqlite3.

Baseline (the "raw floor"): one thread, stdlib ``sqlite3``, WAL,
``synchronous=NORMAL``, a table with an index on ``(state, id)``; per job one
claim transaction (``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING``)
and one completion transaction. No Trio, no threads, no JSON decoding.

Storage: ``SQLiteStorage`` driven from Trio, one task: ``claim`` a batch of B
jobs (one thread hop, one transaction), then ``apply`` B ``Succeeded``
transitions (one hop, one transaction), until the queue is empty.

Both start from N enqueued jobs in a fresh database file (enqueueing is not
timed). One warm-up, then rounds in a rotated order in one process; medians,
ranges, and the ratio as the median of per-round ratios.

    python benchmarks/bench_sqlite_storage.py [--quick] [--jobs N] [--rounds R] [--dir D]
"""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio
from _harness import alternate, arguments, collect, machine, table
from _sqlite_floor import raw_round

from trio_monitor.jobs import Job, Succeeded, Transition
from trio_monitor.jobs._backends._sqlite import SQLiteStorage
from trio_monitor.jobs._model import utcnow


async def storage_round(path: Path, n: int, batch: int) -> float:
    storage = await SQLiteStorage.open(str(path))
    try:
        for first in range(0, n, 1000):
            await storage.enqueue_many(
                [Job.new("noop", {"n": i}) for i in range(first, min(n, first + 1000))]
            )
        workers = [f"w{i}" for i in range(batch)]
        done = 0
        start = time.perf_counter()
        while True:
            claimed = await storage.claim(
                queues=["default"], worker_ids=workers, server_name="bench", now=utcnow()
            )
            if not claimed:
                break
            results = await storage.apply(
                [Transition(job.id, job.version, Succeeded(None, 0.0)) for job in claimed]
            )
            done += sum(job is not None for job in results)
        elapsed = time.perf_counter() - start
    finally:
        await storage.aclose()
    assert done == n
    return n / elapsed


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per round (default 10000)")
    parser.add_argument(
        "--dir", default=None, help="where the database files go (default: the temp dir)"
    )
    args = parser.parse_args()
    n = args.jobs or (500 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 5)
    floor = "raw sqlite3, 2 tx per job"

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        files = itertools.count()

        def fresh() -> Path:
            return Path(tmp) / f"{next(files)}.db"

        systems: dict[str, Callable[[], float]] = {floor: lambda: raw_round(fresh(), n)}
        for b in (1, 10, 32):
            systems[f"SQLiteStorage, batch {b}"] = lambda b=b: trio.run(
                storage_round, fresh(), n, b
            )
        rates = collect(alternate(systems, rounds), float)

    print(f"SQLite storage claim+apply, {n} jobs per round, {rounds} round(s) after a warm-up")
    print(f"{machine()}; SQLite {sqlite3.sqlite_version}, Trio {trio.__version__}")
    print(table(rates, unit="jobs/s", spec=",.0f", baselines=[floor]))


if __name__ == "__main__":
    main()
