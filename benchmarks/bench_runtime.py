"""Benchmark: fire-and-forget jobs through the background runtime.

N no-op jobs (default 50,000), two comparisons:

1. In one process, alternating rounds, each run in a fresh ``trio.run``:

   * ``runtime``: ``await handle.spawn_wait(noop)`` N times into
     ``tm.open_runtime()`` with the default config (queue 1,024, 128 at
     once), then the block's drain.
   * ``limiter``: the hand-written Trio equivalent, N ``nursery.start_soon``
     tasks, each ``async with trio.CapacityLimiter(128): await noop()``.

   Median CPU and wall times per mode, the median of the per-round ratios,
   and the peak traced memory (``tracemalloc``, in separate untimed runs).

2. Each run in a process of its own (``benchmarks/_runtime_peer.py``): the
   same two, and aiojobs on asyncio (``Scheduler(limit=128,
   pending_limit=1024)``, ``await scheduler.spawn(noop())`` N times, then
   ``wait_and_close()``). Median wall time and peak RSS (``VmHWM``) over the
   runs; imports are outside the timed region.

Run ``python benchmarks/bench_runtime.py`` (``--quick`` for a smoke run).
aiojobs is optional: without it that column is skipped.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import trio

# The same workloads the separate-process runs use.
from _runtime_peer import limiter_jobs as run_limiter
from _runtime_peer import runtime_jobs as run_runtime

import trio_monitor as tm

PEER = Path(__file__).with_name("_runtime_peer.py")


IN_PROCESS: dict[str, Callable[[int], object]] = {
    "runtime": run_runtime,
    "limiter": run_limiter,
}


def timed(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    trio.run(fn, n)  # type: ignore[arg-type]
    return time.process_time() - cpu, time.perf_counter() - wall


def traced_peak(fn: Callable[[int], object], n: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        trio.run(fn, n)  # type: ignore[arg-type]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def in_process(n: int, rounds: int) -> None:
    cpu: dict[str, list[float]] = {mode: [] for mode in IN_PROCESS}
    wall: dict[str, list[float]] = {mode: [] for mode in IN_PROCESS}
    ratios_cpu: list[float] = []
    ratios_wall: list[float] = []
    modes = list(IN_PROCESS)
    timed(run_runtime, min(n, 5_000))  # warm up
    timed(run_limiter, min(n, 5_000))
    for r in range(rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        got = {mode: timed(IN_PROCESS[mode], n) for mode in order}
        for mode, (c, w) in got.items():
            cpu[mode].append(c)
            wall[mode].append(w)
        ratios_cpu.append(got["runtime"][0] / got["limiter"][0])
        ratios_wall.append(got["runtime"][1] / got["limiter"][1])
    peaks = {mode: traced_peak(fn, n) for mode, fn in IN_PROCESS.items()}

    print(f"1. In one process: {n:,} no-op jobs, {rounds} alternating rounds")
    print(f"{'mode':<10}{'CPU s':>10}{'wall s':>10}{'µs/job':>10}{'peak traced':>14}")
    for mode in modes:
        c, w = statistics.median(cpu[mode]), statistics.median(wall[mode])
        print(f"{mode:<10}{c:>10.3f}{w:>10.3f}{c / n * 1e6:>10.2f}{peaks[mode] / 2**20:>11.1f} MiB")
    print(
        f"runtime / limiter: CPU {statistics.median(ratios_cpu):.3f}, "
        f"wall {statistics.median(ratios_wall):.3f} (median of per-round ratios); "
        f"peak traced memory {peaks['runtime'] / peaks['limiter']:.3f}"
    )


def peer_run(mode: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(PEER), mode, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def separate_processes(n: int, runs: int) -> None:
    modes = ["runtime", "limiter"]
    if importlib.util.find_spec("aiojobs") is not None:
        modes.append("aiojobs")
    else:
        print("(aiojobs is not installed: skipping it)")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for r in range(runs):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            results[mode].append(peer_run(mode, n))

    def med(mode: str, key: str) -> float:
        return statistics.median(res[key] for res in results[mode])

    print()
    print(f"2. One process per run: {n:,} no-op jobs, median of {runs} runs per mode")
    print(f"{'mode':<10}{'wall s':>10}{'CPU s':>10}{'peak RSS':>13}{'RSS before':>13}")
    for mode in modes:
        print(
            f"{mode:<10}{med(mode, 'wall'):>10.3f}{med(mode, 'cpu'):>10.3f}"
            f"{med(mode, 'peak_rss_kib') / 1024:>9.1f} MiB"
            f"{med(mode, 'rss_before_kib') / 1024:>9.1f} MiB"
        )
    for peer in modes[1:]:
        print(
            f"runtime / {peer}: wall {med('runtime', 'wall') / med(peer, 'wall'):.3f}, "
            f"peak RSS {med('runtime', 'peak_rss_kib') / med(peer, 'peak_rss_kib'):.3f}, "
            "peak RSS above start "
            f"{(med('runtime', 'peak_rss_kib') - med('runtime', 'rss_before_kib')) / 1024:.1f}"
            f" vs {(med(peer, 'peak_rss_kib') - med(peer, 'rss_before_kib')) / 1024:.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("-n", type=int, default=None, help="jobs per run (default 50,000)")
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 50_000)
    rounds = 2 if args.quick else 7
    runs = 1 if args.quick else 5
    print(
        f"CPython {platform.python_version()}, Trio {trio.__version__}, "
        f"trio_monitor {tm.__version__}, {platform.machine()}"
    )
    in_process(n, rounds)
    separate_processes(n, runs)


if __name__ == "__main__":
    main()
