"""Benchmark: the SQLite job storage's claim + apply against raw stdlib sqlite3.

Baseline (the "raw floor"): one thread, stdlib ``sqlite3``, WAL,
``synchronous=NORMAL``, a table with an index on ``(state, id)``; per job one
claim transaction (``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING``)
and one completion transaction. No Trio, no threads, no JSON decoding.

Storage: ``SQLiteStorage`` driven from Trio, one task: ``claim`` a batch of B
jobs (one thread hop, one transaction), then ``apply`` B ``Succeeded``
transitions (one hop, one transaction), until the queue is empty.

Both start from N enqueued jobs in a fresh database file (enqueueing is not
timed). Rounds alternate between the two in one process; the ratio is the
median of per-round ratios.

    python benchmarks/bench_sqlite_storage.py [--quick] [--jobs N] [--rounds R] [--dir D]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    parser.add_argument(
        "--dir", default=None, help="where the database files go (default: the temp dir)"
    )
    args = parser.parse_args()
    n = args.jobs or (500 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 5)
    batches = (1, 10, 32)

    raw: list[float] = []
    ours: dict[int, list[float]] = {b: [] for b in batches}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(rounds):
            raw.append(raw_round(Path(tmp) / f"raw{r}.db", n))
            for b in batches:
                ours[b].append(trio.run(storage_round, Path(tmp) / f"s{r}-{b}.db", n, b))

    print(f"SQLite storage claim+apply, {n} jobs per round, {rounds} round(s), files in {tmp}")
    print(
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, Trio {trio.__version__}"
    )
    print(f"{'system':<32}{'jobs/s (median)':>18}{'vs raw (median ratio)':>24}")
    print(f"{'raw sqlite3, 2 tx per job':<32}{statistics.median(raw):>18,.0f}{'1.00':>24}")
    for b in batches:
        ratios = [o / r for o, r in zip(ours[b], raw, strict=True)]
        print(
            f"{f'SQLiteStorage, batch {b}':<32}{statistics.median(ours[b]):>18,.0f}"
            f"{statistics.median(ratios):>24.2f}"
        )


if __name__ == "__main__":
    main()
