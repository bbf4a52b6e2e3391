"""Benchmark: the task registry's spawn and join_all against a bare nursery.

Registry: spawn N tasks that each wait on the registry's shutdown token and
return; set the token; time ``join_all``. Baseline: N tasks in a plain
nursery that each wait on a ``trio.Event``; set it; time until the nursery
has exited. The spawn phase (spawning plus letting every task start and
park) is timed too, and a separate set of rounds measures the tracemalloc
peak of a whole round. Rounds alternate between the two in one process;
ratios are medians of per-round ratios.

    python benchmarks/bench_registry.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

import trio
import trio.testing

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


def peak_memory(fn: Callable[[int], object], n: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        trio.run(fn, n)  # type: ignore[arg-type]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
    n, rounds, mem_rounds = (1_000, 3, 1) if args.quick else (10_000, 15, 5)

    timed(registry_round, n)  # warm-up
    timed(nursery_round, n)
    reg: list[Phases] = []
    bare: list[Phases] = []
    for i in range(rounds):
        # Alternate which goes first, so drift hits both alike.
        order = [(registry_round, reg), (nursery_round, bare)]
        for fn, out in order if i % 2 == 0 else reversed(order):
            out.append(timed(fn, n))
    reg_mem: list[int] = []
    bare_mem: list[int] = []
    for _ in range(mem_rounds):
        reg_mem.append(peak_memory(registry_round, n))
        bare_mem.append(peak_memory(nursery_round, n))

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    rows = []
    for phase, idx in (("spawn", 0), ("join", 1)):
        r = med([x[idx] for x in reg])
        b = med([x[idx] for x in bare])
        ratio = med([x[idx] / y[idx] for x, y in zip(reg, bare, strict=True)])
        rows.append((phase, r * 1e3, b * 1e3, ratio))
    r_mem = med([float(m) for m in reg_mem])
    b_mem = med([float(m) for m in bare_mem])
    mem_ratio = med([x / y for x, y in zip(reg_mem, bare_mem, strict=True)])

    print(
        f"task registry vs bare nursery: {n} tasks, {rounds} timed rounds, "
        f"{mem_rounds} memory rounds; Python {sys.version.split()[0]}, Trio {trio.__version__}"
    )
    print(f"{'phase':<22}{'registry':>12}{'nursery':>12}{'ratio':>8}")
    for phase, r, b, ratio in rows:
        print(f"{phase + ' (ms, median)':<22}{r:>12.1f}{b:>12.1f}{ratio:>8.2f}")
    print(f"{'peak memory (MB)':<22}{r_mem / 1e6:>12.2f}{b_mem / 1e6:>12.2f}{mem_ratio:>8.2f}")
    per_task = [(x - y) / n for x, y in zip(reg_mem, bare_mem, strict=True)]
    print(f"extra peak memory per task: {med(per_task):.0f} bytes")


if __name__ == "__main__":
    main()
