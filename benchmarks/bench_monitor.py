"""Benchmark: the cost of spawning a task through the task monitor.

N no-op tasks (default 50,000) are spawned and run to completion in two
shapes: in batches of 1,000 (spawn the batch, wait until it has finished),
and all N spawned at once (then wait). Three ways each:

* ``monitor``: ``TaskMonitor.spawn_finite`` inside one ``open_monitor``,
  with one subscriber.
* ``hand-written``: the honest baseline, what a Trio user writes for an
  abortable task whose exceptions are isolated and reported: a
  ``trio.CancelScope`` created at spawn time and kept in a dict (id -> scope)
  until the task exits, so that it can be aborted before it has even
  started, and an ``except Exception`` that reports.
* ``bare``: ``nursery.start_soon`` of the same no-op (not abortable, no
  failure isolation): the floor.

Each run is a fresh ``trio.run``, timed from before the first spawn to the
end of the run (the nursery's or monitor's exit included). One warm-up, then
alternating rounds; medians, ranges and per-round ratios of this process's
CPU time (``time.process_time``), which other processes on the machine
disturb least.

    python benchmarks/bench_monitor.py [--quick] [-n N] [--rounds R] [--plot]
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
import trio.lowlevel
from _harness import (
    Measurement,
    Samples,
    alternate,
    arguments,
    bar_chart,
    collect,
    machine,
    measure,
    table,
)

import trio_monitor as tm

BATCH = 1_000


async def noop() -> None:
    pass


def report(exc: Exception) -> None:  # pragma: no cover - never called here
    print("task failed:", exc, file=sys.stderr)


async def run_monitor(n: int, batch: int) -> None:
    async with tm.open_monitor() as monitor:
        monitor.subscribe()
        for _ in range(n // batch):
            for _ in range(batch):
                monitor.spawn_finite("noop", noop)
            while monitor.statistics().active_tasks:
                await trio.lowlevel.checkpoint()


async def run_bare(n: int, batch: int) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(n // batch):
            for _ in range(batch):
                nursery.start_soon(noop)
            while nursery.child_tasks:
                await trio.lowlevel.checkpoint()


async def run_hand_written(n: int, batch: int) -> None:
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
        for _ in range(n // batch):
            for _ in range(batch):
                spawn(nursery, noop)
            while scopes:
                await trio.lowlevel.checkpoint()


VARIANTS: dict[str, Callable[[int, int], Awaitable[None]]] = {
    "monitor": run_monitor,
    "hand-written": run_hand_written,
    "bare": run_bare,
}


def run(variant: Callable[[int, int], Awaitable[None]], n: int, batch: int) -> Measurement:
    return measure(partial(trio.run, variant, n, batch))


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="tasks per run (default 50,000)")
    args = parser.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)
    rounds = args.rounds or (3 if args.quick else 9)
    if n % BATCH:
        parser.error(f"-n must be a multiple of {BATCH}")
    print(f"{machine()}; Trio {trio.__version__}, trio_monitor {tm.__version__}")
    charts: dict[str, Samples] = {}
    for batch, shape in ((BATCH, f"in batches of {BATCH:,}"), (n, "all spawned at once")):
        systems = {name: partial(run, variant, n, batch) for name, variant in VARIANTS.items()}
        cpu = collect(alternate(systems, rounds), lambda m: m.cpu)
        print(f"\n{n:,} no-op tasks {shape}, {rounds} rounds after a warm-up: CPU time")
        print(table(cpu, unit="s", baselines=["hand-written", "bare"]))
        print(
            "per task (median): "
            + ", ".join(f"{name} {cpu.median(name) / n * 1e6:.2f} µs" for name in cpu.values)
        )
        charts[shape] = cpu
    if args.plot:
        for shape, cpu in charts.items():
            bar_chart(
                "monitor_" + ("batches" if "batches" in shape else "at_once"),
                f"{n:,} no-op tasks {shape}",
                cpu,
                label="µs of CPU per task (median, range)",
                scale=1e6 / n,
            )


if __name__ == "__main__":
    main()
