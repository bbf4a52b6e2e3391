"""Benchmark: the SQLite job storage's claim + apply against raw stdlib sqlite3.

Baseline (the "raw floor"): one thread, stdlib ``sqlite3``, WAL,
``synchronous=NORMAL``, a table with an index on ``(state, id)``; per job one
claim transaction (``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING``)
and one completion transaction. No Trio, no threads, no JSON decoding.

Storage: ``SQLiteStorage`` driven from Trio, one task: ``claim`` a batch of B
jobs (one thread hop, one transaction), then ``apply`` B ``Succeeded``
transitions (one hop, one transaction), until the queue is empty.

Storage, combined: what a job server at its default config asks of the
storage (5 workers claim 5 jobs at a time): the ``apply`` of the last batch
and the ``claim`` of the next are called together, so the storage thread
runs both in one hop and one transaction.

``--profile`` instead runs a few rounds of the combined batch-5 and of the
batch-10 storage and reports the storage thread's own cost per job: its CPU
time inside its batches, the SQL statements it ran, and a cProfile of that
thread alone (the functions with the most own time).

Both start from N enqueued jobs in a fresh database file (enqueueing is not
timed). One warm-up, then rounds in a rotated order in one process; medians,
ranges, and the ratio as the median of per-round ratios.

    python benchmarks/bench_sqlite_storage.py [--quick] [--jobs N] [--rounds R] [--dir D]
    python benchmarks/bench_sqlite_storage.py --profile [--jobs N] [--rounds R]
"""

from __future__ import annotations

import collections
import cProfile
import itertools
import pstats
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from _harness import alternate, arguments, collect, machine, table
from _sqlite_floor import raw_round

from trio_monitor.jobs import Job, Succeeded, Transition
from trio_monitor.jobs._backends._sqlite import SQLiteStorage
from trio_monitor.jobs._backends._sqlite._combiner import ConnectionThread
from trio_monitor.jobs._model import utcnow


def succeeded(claimed: list[Job]) -> list[Transition]:
    return [Transition(job.id, job.version, Succeeded(None, 0.0)) for job in claimed]


async def storage_round(path: Path, n: int, batch: int, combined: bool = False) -> float:
    """Claim and finish ``n`` jobs, ``batch`` at a time; jobs per second.

    ``combined``: each claim is called together with the apply of the
    previous batch (both run in one hop and one transaction).
    """
    storage = await SQLiteStorage.open(str(path))
    try:
        for first in range(0, n, 1000):
            await storage.enqueue_many(
                [Job.new("noop", {"n": i}) for i in range(first, min(n, first + 1000))]
            )
        workers = [f"w{i}" for i in range(batch)]
        done = 0
        STORAGE_THREAD.start()
        start, trio_cpu = time.perf_counter(), time.thread_time()

        async def claim() -> list[Job]:
            return await storage.claim(
                queues=["default"], worker_ids=workers, server_name="bench", now=utcnow()
            )

        async def claim_into(claimed: list[Job]) -> None:
            claimed.extend(await claim())

        async def apply(transitions: list[Transition]) -> None:
            nonlocal done
            if transitions:
                results = await storage.apply(transitions)
                done += sum(job is not None for job in results)

        pending: list[Transition] = []
        while True:
            if combined:
                claimed: list[Job] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(apply, pending)
                    nursery.start_soon(claim_into, claimed)
                pending = succeeded(claimed)
            else:
                claimed = await claim()
                await apply(succeeded(claimed))
            if not claimed:
                break
        await apply(pending)
        elapsed = time.perf_counter() - start
        STORAGE_THREAD.stop(time.thread_time() - trio_cpu)
    finally:
        await storage.aclose()
    assert done == n
    return n / elapsed


# -- the storage thread's own cost (--profile) ---------------------------------------


class StorageThread:
    """What the storage thread did in the timed part of a round (written from that thread).

    Wraps ``ConnectionThread._run`` (one batch: one hop, one transaction) in
    this process, to time it with ``time.thread_time`` and, when asked, to
    count its SQL statements and cProfile it; nothing in trio_monitor changes.
    """

    def __init__(self) -> None:
        self.on = False
        self.profiler: cProfile.Profile | None = None
        self.trace = False
        self.start()

    def start(self) -> None:
        self.batches = 0
        self.cpu = 0.0
        self.trio_cpu = 0.0  # the Trio thread's, set by stop()
        self.statements: collections.Counter[str] = collections.Counter()
        self.on = True

    def stop(self, trio_cpu: float) -> None:
        self.on = False
        self.trio_cpu = trio_cpu

    def install(self) -> None:
        run = ConnectionThread._run

        def count(sql: str) -> None:
            self.statements.update((" ".join(sql.split()[:2]),))

        def measured(thread: ConnectionThread, batch: list[Any]) -> None:
            if not self.on:
                return run(thread, batch)
            thread._conn.set_trace_callback(count if self.trace else None)
            profiler = self.profiler
            cpu = time.thread_time()
            if profiler is not None:
                profiler.enable()
            try:
                run(thread, batch)
            finally:
                if profiler is not None:
                    profiler.disable()
                self.cpu += time.thread_time() - cpu
                self.batches += 1

        ConnectionThread._run = measured  # type: ignore[method-assign]


STORAGE_THREAD = StorageThread()


def profile(tmp: Path, n: int, rounds: int, top: int) -> None:
    """The storage thread's CPU, statements and own-time profile per job."""
    STORAGE_THREAD.install()
    files = itertools.count()
    cases = {
        "batch 5, claim+apply combined (the server's default)": (5, True),
        "batch 10, claim then apply": (10, False),
    }
    for label, (batch, combined) in cases.items():
        cpus, trio_cpus, rates = [], [], []
        for _ in range(rounds + 1):  # the first is a warm-up
            rate = trio.run(storage_round, tmp / f"{next(files)}.db", n, batch, combined)
            cpus.append(STORAGE_THREAD.cpu / n * 1e6)
            trio_cpus.append(STORAGE_THREAD.trio_cpu / n * 1e6)
            rates.append(rate)
        cpus, trio_cpus, rates = cpus[1:], trio_cpus[1:], rates[1:]
        STORAGE_THREAD.trace = True
        trio.run(storage_round, tmp / f"{next(files)}.db", n, batch, combined)
        STORAGE_THREAD.trace = False
        statements = dict(STORAGE_THREAD.statements)
        batches = STORAGE_THREAD.batches
        STORAGE_THREAD.profiler = profiler = cProfile.Profile()
        trio.run(storage_round, tmp / f"{next(files)}.db", n, batch, combined)
        STORAGE_THREAD.profiler = None
        print(f"\n{label}: {statistics.median(rates):,.0f} jobs/s (median of {rounds})")
        print(
            f"  storage thread CPU in its batches: {statistics.median(cpus):.1f} us/job"
            f" ({min(cpus):.1f}-{max(cpus):.1f}); {batches / n:.3f} batches/job"
        )
        low, high = min(trio_cpus), max(trio_cpus)
        print(
            f"  Trio thread CPU (the calls, and building the transitions):"
            f" {statistics.median(trio_cpus):.1f} us/job ({low:.1f}-{high:.1f})"
        )
        print(f"  SQL statements: {sum(statements.values()) / n:.2f} per job")
        for kind, count in sorted(statements.items(), key=lambda kv: -kv[1]):
            print(f"    {count / n:6.3f}  {kind}")
        stats = pstats.Stats(profiler)
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"  cProfile of the storage thread: {total / n * 1e6:.1f} us/job profiled, own time:")
        rows = sorted(
            (
                (tottime, calls, f"{Path(file).name}:{line}({name})" if line else name)
                for (file, line, name), (_, calls, tottime, _, _) in stats.stats.items()  # type: ignore[attr-defined]
            ),
            reverse=True,
        )
        for tottime, calls, where in rows[:top]:
            own = tottime / n * 1e6
            print(f"    {tottime / total:6.1%} {own:6.2f} us {calls / n:6.2f}/job  {where}")


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per round (default 10000)")
    parser.add_argument(
        "--dir", default=None, help="where the database files go (default: the temp dir)"
    )
    parser.add_argument("--profile", action="store_true", help="the storage thread's cost per job")
    parser.add_argument("--top", type=int, default=20, help="functions listed by --profile")
    args = parser.parse_args()
    n = args.jobs or (500 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 5)
    floor = "raw sqlite3, 2 tx per job"

    if args.profile:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            print(f"{machine()}; SQLite {sqlite3.sqlite_version}; {n} jobs per round")
            profile(Path(tmp), n, rounds, args.top)
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        files = itertools.count()

        def fresh() -> Path:
            return Path(tmp) / f"{next(files)}.db"

        systems: dict[str, Callable[[], float]] = {floor: lambda: raw_round(fresh(), n)}
        for b in (1, 10, 32):
            systems[f"SQLiteStorage, batch {b}"] = lambda b=b: trio.run(
                storage_round, fresh(), n, b
            )
        systems["SQLiteStorage, batch 5, claim+apply combined"] = lambda: trio.run(
            storage_round, fresh(), n, 5, True
        )
        rates = collect(alternate(systems, rounds), float)

    print(f"SQLite storage claim+apply, {n} jobs per round, {rounds} round(s) after a warm-up")
    print(f"{machine()}; SQLite {sqlite3.sqlite_version}, Trio {trio.__version__}")
    print(table(rates, unit="jobs/s", spec=",.0f", baselines=[floor]))


if __name__ == "__main__":
    main()
