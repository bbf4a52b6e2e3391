"""Benchmark: the cost of spawning a task through the task monitor.

N no-op tasks are spawned and run to completion, in batches of 1,000 (spawn
the batch, wait until it has finished), three ways:

* ``monitor``: ``TaskMonitor.spawn_finite`` inside one ``open_monitor``.
* ``bare``: ``nursery.start_soon`` of the same no-op (not abortable, no
  failure isolation: the floor).
* ``hand-written``: what a Trio user writes for an abortable task whose
  exceptions are isolated and reported: a ``trio.CancelScope`` created at
  spawn time and kept in a dict (id -> scope) until the task exits, so that
  it can be aborted before it has even started, and an ``except Exception``
  that reports.

Each round runs the three in a rotated order, each in a fresh ``trio.run``;
the table gives median CPU times (``time.process_time``) over the rounds and
the median of the per-round ratios. Run ``python benchmarks/bench_monitor.py``
(``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.lowlevel
from _alternating import alternate, cpu_seconds

import trio_monitor as tm

BATCH = 1_000


async def noop() -> None:
    pass


def report(exc: Exception) -> None:  # pragma: no cover - never called here
    print("task failed:", exc, file=sys.stderr)


async def run_monitor(n: int) -> None:
    async with tm.open_monitor() as monitor:
        monitor.subscribe()
        for _ in range(n // BATCH):
            for _ in range(BATCH):
                monitor.spawn_finite("noop", noop)
            while monitor.statistics().active_tasks:
                await trio.lowlevel.checkpoint()


async def run_bare(n: int) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(n // BATCH):
            for _ in range(BATCH):
                nursery.start_soon(noop)
            while nursery.child_tasks:
                await trio.lowlevel.checkpoint()


async def run_hand_written(n: int) -> None:
    scopes: dict[int, trio.CancelScope] = {}
    ids = itertools.count()

    async def supervised(
        key: int, scope: trio.CancelScope, fn: Callable[[], Awaitable[Any]]
    ) -> None:
        try:
            with scope:
                try:
                    await fn()
                except Exception as exc:
                    report(exc)
        finally:
            del scopes[key]

    def spawn(nursery: trio.Nursery, fn: Callable[[], Awaitable[Any]]) -> trio.CancelScope:
        key = next(ids)
        scope = scopes[key] = trio.CancelScope()
        nursery.start_soon(supervised, key, scope, fn)
        return scope

    async with trio.open_nursery() as nursery:
        for _ in range(n // BATCH):
            for _ in range(BATCH):
                spawn(nursery, noop)
            while scopes:
                await trio.lowlevel.checkpoint()


VARIANTS: dict[str, Callable[[int], Awaitable[None]]] = {
    "monitor": run_monitor,
    "bare": run_bare,
    "hand-written": run_hand_written,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=5,000 and 3 rounds")
    parser.add_argument("-n", type=int, default=None, help="tasks per run (default 50,000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 7)")
    args = parser.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)
    rounds = args.rounds or (3 if args.quick else 7)
    if n % BATCH:
        parser.error(f"-n must be a multiple of {BATCH}")

    names = list(VARIANTS)
    cpu_seconds(run_monitor, BATCH)  # warm-up: imports, code paths
    times = alternate(VARIANTS, n, rounds)

    print(
        f"task monitor: {n:,} no-op tasks in batches of {BATCH:,}, {rounds} rounds, "
        f"CPython {platform.python_version()}, Trio {trio.__version__}"
    )
    print(f"{'variant':<14}{'CPU s':>10}{'us/task':>10}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:<14}{median:>10.3f}{median / n * 1e6:>10.2f}")
    for base in ("hand-written", "bare"):
        ratios = [m / b for m, b in zip(times["monitor"], times[base], strict=True)]
        print(f"monitor / {base:<13} median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
