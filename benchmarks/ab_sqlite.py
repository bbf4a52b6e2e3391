"""A/B: the SQLite storage and job server of another commit against this checkout, in one process.

On a shared, busy machine two benchmark runs one after the other measure
the machine as much as the code. This script imports the ``trio_monitor``
of a git commit (``--base``, default ``main``) under another package name
next to this checkout's, and runs the rounds of both (and the raw floor of
``_sqlite_floor.py``) alternating in one process, in an order rotated every
round. Per system: jobs/s and its ratio to the floor (median of per-round
ratios, with ranges), and the CPU time per job of the Trio thread and of
the storage thread (inside its batches).

* ``--mode server``: a JobServer with the given config works through N
  no-op jobs (the round of ``bench_sqlite.py``).
* ``--mode storage``: the storage alone (the rounds of
  ``bench_sqlite_storage.py``): claim+apply combined in batches of 5 (what
  the server's default config asks), and claim then apply in batches of 10.

Usage: ``python benchmarks/ab_sqlite.py [--base REF] [--mode server|storage]
[--jobs N] [--rounds R] [--workers W] [--batch B]``
"""

from __future__ import annotations

import importlib
import io
import itertools
import logging
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _harness import ROOT, arguments, machine
from _sqlite_floor import raw_round

#: Whose ConnectionThread._run is running now: CPU seconds of its batches.
STORAGE_CPU = [0.0]


def import_base(ref: str, into: Path) -> str:
    """Extract ``trio_monitor`` at ``ref`` as the package ``trio_monitor_base``; its name."""
    archive = subprocess.run(
        ["git", "archive", ref, "trio_monitor"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "trio_monitor").rename(into / "trio_monitor_base")
    # open_storage finds its backends by module name.
    registry = into / "trio_monitor_base" / "jobs" / "_storage.py"
    registry.write_text(
        registry.read_text().replace('"trio_monitor.jobs.', '"trio_monitor_base.jobs.')
    )
    sys.path.insert(0, str(into))
    return "trio_monitor_base"


def timed_batches(package: str) -> None:
    """Count the CPU time of the storage thread's batches (wraps ConnectionThread._run)."""
    module = importlib.import_module(f"{package}.jobs._backends._sqlite._combiner")
    run = module.ConnectionThread._run

    def timed(self: Any, batch: list[Any]) -> None:
        cpu = time.thread_time()
        try:
            run(self, batch)
        finally:
            STORAGE_CPU[0] += time.thread_time() - cpu

    module.ConnectionThread._run = timed


async def enqueue(jobs: Any, storage: Any, n: int) -> None:
    for first in range(0, n, 1000):
        await storage.enqueue_many(
            [jobs.Job.new("noop", {"n": i}) for i in range(first, min(n, first + 1000))]
        )


async def server_round(
    package: str, path: Path, n: int, workers: int | None, batch: int | None
) -> tuple[float, float, float]:
    jobs = importlib.import_module(f"{package}.jobs")
    registry = jobs.WorkerRegistry()

    @registry.worker("noop")
    async def noop(job: Any, ctx: Any) -> None:
        return None

    async with jobs.open_storage(f"sqlite:///{path}") as storage:
        await enqueue(jobs, storage, n)
        all_done = trio.Event()
        succeeded = 0

        def count(job: Any, old: Any, new: Any) -> None:
            nonlocal succeeded
            if isinstance(new, jobs.Succeeded):
                succeeded += 1
                if succeeded == n:
                    all_done.set()

        options: dict[str, Any] = {"server_name": "bench"}
        if workers is not None:
            options["worker_count"] = workers
        if batch is not None:
            options["fetch_batch_size"] = batch
        server = jobs.JobServer(
            jobs.ServerConfig(**options), storage, registry, on_state_change=count
        )
        async with trio.open_nursery() as nursery:
            STORAGE_CPU[0] = 0.0
            start, cpu = time.perf_counter(), time.thread_time()
            await nursery.start(server.run)
            await all_done.wait()
            elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
            storage_cpu = STORAGE_CPU[0]
            await server.stop()
    return n / elapsed, cpu / n * 1e6, storage_cpu / n * 1e6


async def storage_round(
    package: str, path: Path, n: int, batch: int, combined: bool
) -> tuple[float, float, float]:
    jobs = importlib.import_module(f"{package}.jobs")
    model = importlib.import_module(f"{package}.jobs._model")
    async with jobs.open_storage(f"sqlite:///{path}") as storage:
        await enqueue(jobs, storage, n)
        workers = [f"w{i}" for i in range(batch)]
        done = 0

        async def claim_into(claimed: list[Any]) -> None:
            claimed.extend(
                await storage.claim(
                    queues=["default"], worker_ids=workers, server_name="bench", now=model.utcnow()
                )
            )

        async def apply(transitions: list[Any]) -> None:
            nonlocal done
            if transitions:
                done += sum(job is not None for job in await storage.apply(transitions))

        def succeeded(claimed: list[Any]) -> list[Any]:
            return [jobs.Transition(j.id, j.version, jobs.Succeeded(None, 0.0)) for j in claimed]

        STORAGE_CPU[0] = 0.0
        start, cpu = time.perf_counter(), time.thread_time()
        pending: list[Any] = []
        while True:
            claimed: list[Any] = []
            if combined:  # the apply of the last batch goes with the next claim
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(apply, pending)
                    nursery.start_soon(claim_into, claimed)
                pending = succeeded(claimed)
            else:
                await claim_into(claimed)
                await apply(succeeded(claimed))
            if not claimed:
                break
        await apply(pending)
        elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    assert done == n
    return n / elapsed, cpu / n * 1e6, STORAGE_CPU[0] / n * 1e6


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], rounds=8)
    parser.add_argument("--base", default="main", help="the commit to compare with (git ref)")
    parser.add_argument("--mode", choices=["server", "storage"], default="server")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=None, help="server: worker_count")
    parser.add_argument("--batch", type=int, default=None, help="server: fetch_batch_size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = args.jobs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        packages = {
            f"{args.base} (base)": import_base(args.base, root / "base"),
            "this": "trio_monitor",
        }
        for package in packages.values():
            timed_batches(package)
        cases: dict[str, Any] = {}
        for label, package in packages.items():
            if args.mode == "server":
                cases[label] = (server_round, package, args.workers, args.batch)
            else:
                cases[f"{label}, batch 5 combined"] = (storage_round, package, 5, True)
                cases[f"{label}, batch 10"] = (storage_round, package, 10, False)
        files = itertools.count()
        names = ["floor", *cases]
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        for r in range(args.rounds + 1):  # the first round is a warm-up
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                path = root / f"{next(files)}.db"
                if name == "floor":
                    got = (raw_round(path, n), 0.0, 0.0)
                else:
                    fn, *rest = cases[name]
                    got = trio.run(fn, rest[0], path, n, *rest[1:])
                if r:
                    results[name].append(got)
    print(f"{machine()}; {args.mode}, {n} jobs, {args.rounds} rounds after a warm-up")
    floor = [rate for rate, _, _ in results["floor"]]
    print(
        f"raw floor: {statistics.median(floor):,.0f} jobs/s ({min(floor):,.0f}-{max(floor):,.0f})"
    )
    for name in cases:
        rates = [rate for rate, _, _ in results[name]]
        ratios = [rate / f for rate, f in zip(rates, floor, strict=True)]
        trio_cpu = [c for _, c, _ in results[name]]
        store_cpu = [c for _, _, c in results[name]]
        print(
            f"{name}: {statistics.median(rates):,.0f} jobs/s ({min(rates):,.0f}-{max(rates):,.0f}),"
            f" / floor {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f});"
            f" CPU per job: Trio thread {statistics.median(trio_cpu):.1f}"
            f" ({min(trio_cpu):.1f}-{max(trio_cpu):.1f}) us, storage thread"
            f" {statistics.median(store_cpu):.1f} ({min(store_cpu):.1f}-{max(store_cpu):.1f}) us"
        )


if __name__ == "__main__":
    main()
