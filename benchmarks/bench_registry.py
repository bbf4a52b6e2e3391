"""Benchmark: the task registry's spawn and join_all against a bare nursery.

Registry: spawn N tasks that each wait on the registry's shutdown token and
return; set the token; time ``join_all``. Baseline: N tasks in a plain
nursery that each wait on a ``trio.Event``; set it; time until the nursery
has exited. The spawn phase (spawning plus letting every task start and
park) is timed too, and a separate set of rounds measures the tracemalloc
peak of a whole round. One warm-up, then rounds alternating between the
two in one process; medians, ranges, and ratios as medians of per-round
ratios.

    python benchmarks/bench_registry.py [--quick] [--rounds R]
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from functools import partial

import trio
import trio.testing
from _harness import alternate, arguments, collect, machine, table

import trio_monitor as tm

Phases = tuple[float, float]  # (spawn seconds, join seconds)


async def registry_round(n: int) -> Phases:
    async with tm.open_registry() as registry:
        token = registry.shutdown_token
        t0 = time.perf_counter()
        for _ in range(n):
            registry.spawn("waiter", tm.TaskKind.BACKGROUND_LOOP, token.wait)
        await trio.testing.wait_all_tasks_blocked()
        t1 = time.perf_counter()
        token.set()
        await registry.join_all(60.0)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


async def nursery_round(n: int) -> Phases:
    event = trio.Event()
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        for _ in range(n):
            nursery.start_soon(event.wait)
        await trio.testing.wait_all_tasks_blocked()
        t1 = time.perf_counter()
        event.set()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def timed(fn: Callable[[int], object], n: int) -> Phases:
    gc.collect()
    result: Phases = trio.run(fn, n)  # type: ignore[arg-type]
    return result


def peak_memory(fn: Callable[[int], object], n: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        trio.run(fn, n)  # type: ignore[arg-type]
        return float(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    n = 1_000 if args.quick else 10_000
    rounds = args.rounds or (3 if args.quick else 15)
    mem_rounds = 1 if args.quick else 5
    systems = {"registry": registry_round, "nursery": nursery_round}
    results = alternate({name: partial(timed, fn, n) for name, fn in systems.items()}, rounds)
    memory = collect(
        alternate(
            {name: partial(peak_memory, fn, n) for name, fn in systems.items()},
            mem_rounds,
            warmup=False,
        ),
        float,
    )
    print(
        f"task registry vs bare nursery: {n} tasks, {rounds} timed rounds, "
        f"{mem_rounds} memory rounds"
    )
    print(f"{machine()}; Trio {trio.__version__}")
    for phase, index in (("spawn", 0), ("join", 1)):
        print(f"{phase} phase")
        print(
            table(
                collect(results, lambda p, i=index: p[i]),
                unit="ms",
                scale=1e3,
                spec=".1f",
                baselines=["nursery"],
            )
        )
    print("peak traced memory")
    print(table(memory, unit="MB", scale=1e-6, spec=".2f", baselines=["nursery"]))
    extra = [
        (r - b) / n
        for r, b in zip(memory.values["registry"], memory.values["nursery"], strict=True)
    ]
    print(f"extra peak memory per task: {statistics.median(extra):.0f} bytes")


if __name__ == "__main__":
    main()
