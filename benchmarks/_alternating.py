"""Alternating rounds of CPU-timed Trio runs, shared by the benchmarks.

Each round runs every variant once, in an order rotated by one per round, so
that a slow phase of the machine hits each variant alike; each run is a fresh
``trio.run`` and is timed in CPU seconds of this process
(``time.process_time``): the work done, not what other processes on the
machine steal from the wall clock.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable

import trio

Variant = Callable[[int], Awaitable[None]]


def cpu_seconds(variant: Variant, n: int) -> float:
    """CPU seconds of one fresh ``trio.run`` of ``variant(n)``."""
    gc.collect()

    async def main() -> float:
        start = time.process_time()
        await variant(n)
        return time.process_time() - start

    return trio.run(main)


def alternate(variants: dict[str, Variant], n: int, rounds: int) -> dict[str, list[float]]:
    """``rounds`` rounds of every variant, in rotated order: name -> CPU seconds per round."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(cpu_seconds(variants[name], n))
    return times
