"""Benchmark: the background runtime against a hand-written Trio worker pool and aiojobs.

N jobs (default 50,000) are submitted one after the other, each waiting for
room when the queue is full, and run to completion, with the same limits on
every side: a queue of 1,024 waiting jobs and 128 running at once. Two
workloads: **no-op** jobs (``async def job(): pass``) and jobs that **await**
``sleep(0.001)`` (``trio.sleep`` or ``asyncio.sleep``). Jobs return nothing.

* ``runtime``: ``await handle.spawn_wait(job)`` N times into
  ``tm.open_runtime(RuntimeConfig(max_queue_size=1024,
  max_concurrent_tasks=128))``, then the block's drain.
* ``trio pool``: the honest floor, what a Trio user writes by hand: 128
  worker tasks reading ``(fn, args)`` from ``trio.open_memory_channel(1024)``,
  each job run inline under ``except Exception`` (so one failing job does not
  kill its worker); ``await send.send((job, ()))`` N times, then close the
  channel and let the nursery exit.
* ``aiojobs``: on asyncio, ``aiojobs.Scheduler(limit=128,
  pending_limit=1024)``, ``await scheduler.spawn(job())`` N times (it waits
  when the pending queue is full), then ``wait_and_close()``.

Each run is a fresh ``trio.run`` / ``asyncio.run`` in this process, timed
from before the first submission to the end of the drain (the event loop's
start and stop included, the same for all). One warm-up, then alternating
rounds; medians, ranges and per-round ratios of CPU time (the wall clock is
shown too). ``--workers`` sweeps the worker count for the throughput chart.

Last, one task alone: the CPU cost of a Trio checkpoint against
``asyncio.sleep(0)``, and of a short ``trio.sleep`` against
``asyncio.sleep``, the per-step costs that every job above pays.

    python benchmarks/bench_runtime.py [--quick] [-n N] [--rounds R] [--plot]
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from _harness import Measurement, alternate, arguments, collect, line_chart, machine, measure, table

import trio_monitor as tm

QUEUE = 1_024
WORKERS = 128
SLEEP = 0.001

Job = Callable[[], Awaitable[None]]


async def trio_noop() -> None:
    pass


async def trio_sleep() -> None:
    await trio.sleep(SLEEP)


async def asyncio_noop() -> None:
    pass


async def asyncio_sleep() -> None:
    await asyncio.sleep(SLEEP)


async def runtime_jobs(n: int, workers: int, job: Job) -> None:
    config = tm.RuntimeConfig(max_queue_size=QUEUE, max_concurrent_tasks=workers)
    async with tm.open_runtime(config) as runtime:
        spawn_wait = runtime.handle().spawn_wait
        for _ in range(n):
            await spawn_wait(job)
    assert runtime.metrics().succeeded == n


async def pool_jobs(n: int, workers: int, job: Job) -> None:
    send, receive = trio.open_memory_channel[tuple[Job, tuple[()]]](QUEUE)
    done = failed = 0

    async def worker() -> None:
        nonlocal done, failed
        async for fn, args in receive:
            try:
                await fn(*args)
            except Exception:
                failed += 1
            else:
                done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
        async with send:
            for _ in range(n):
                await send.send((job, ()))
    assert done == n


async def aiojobs_jobs(n: int, workers: int, job: Job) -> None:
    import aiojobs

    scheduler = aiojobs.Scheduler(limit=workers, pending_limit=QUEUE)
    for _ in range(n):
        await scheduler.spawn(job())
    await scheduler.wait_and_close()


def systems(
    n: int, workers: int, sleep: bool, with_aiojobs: bool
) -> dict[str, Callable[[], Measurement]]:
    trio_job = trio_sleep if sleep else trio_noop
    runs: dict[str, Callable[[], Measurement]] = {
        "runtime": lambda: measure(partial(trio.run, runtime_jobs, n, workers, trio_job)),
        "trio pool": lambda: measure(partial(trio.run, pool_jobs, n, workers, trio_job)),
    }
    if with_aiojobs:
        asyncio_job = asyncio_sleep if sleep else asyncio_noop
        runs["aiojobs"] = lambda: measure(
            partial(asyncio.run, aiojobs_jobs(n, workers, asyncio_job))
        )
    return runs


# -- what a Trio checkpoint and a Trio sleep cost, against asyncio -------------

STEPS = 200_000


async def trio_checkpoints() -> None:
    for _ in range(STEPS):
        await trio.lowlevel.checkpoint()


async def asyncio_yields() -> None:
    for _ in range(STEPS):
        await asyncio.sleep(0)


async def trio_sleeps() -> None:
    for _ in range(STEPS // 10):
        await trio.sleep(1e-6)


async def asyncio_sleeps() -> None:
    for _ in range(STEPS // 10):
        await asyncio.sleep(1e-6)


def primitives(rounds: int) -> None:
    """One task alone: the per-step costs that every job pays on each side."""
    runs: dict[str, tuple[Callable[[], Measurement], int]] = {
        "trio checkpoint()": (lambda: measure(partial(trio.run, trio_checkpoints)), STEPS),
        "asyncio sleep(0)": (lambda: measure(lambda: asyncio.run(asyncio_yields())), STEPS),
        "trio sleep(1e-6)": (lambda: measure(partial(trio.run, trio_sleeps)), STEPS // 10),
        "asyncio sleep(1e-6)": (
            lambda: measure(lambda: asyncio.run(asyncio_sleeps())),
            STEPS // 10,
        ),
    }
    cpu = collect(
        alternate({name: run for name, (run, _) in runs.items()}, rounds), lambda m: m.cpu
    )
    print(f"\nOne task alone, {rounds} rounds after a warm-up: CPU time per step")
    for name, (_, steps) in runs.items():
        low, high = cpu.spread(name)
        print(
            f"{name:<22}{cpu.median(name) / steps * 1e6:>8.2f} µs"
            f"  ({low / steps * 1e6:.2f}-{high / steps * 1e6:.2f})"
        )


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="jobs per run (default 50,000)")
    parser.add_argument(
        "--workers",
        default="1,8,32,128",
        help="worker counts for the --plot sweep (comma-separated)",
    )
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 50_000)
    rounds = args.rounds or (2 if args.quick else 9)
    with_aiojobs = importlib.util.find_spec("aiojobs") is not None
    if not with_aiojobs:
        print("(aiojobs is not installed: its rows are skipped)")
    print(f"{machine()}; Trio {trio.__version__}, trio_monitor {tm.__version__}")
    for sleep in (False, True):
        shape = f"jobs awaiting sleep({SLEEP})" if sleep else "no-op jobs"
        results = alternate(systems(n, WORKERS, sleep, with_aiojobs), rounds)
        print(
            f"\n{n:,} {shape}, queue {QUEUE:,}, {WORKERS} workers, {rounds} rounds after a warm-up"
        )
        cpu = collect(results, lambda m: m.cpu)
        wall = collect(results, lambda m: m.wall)
        print("CPU time")
        print(table(cpu, unit="s", baselines=["trio pool", "aiojobs"]))
        print("wall time")
        print(table(wall, unit="s", baselines=["trio pool", "aiojobs"]))
        print(
            "per job (median CPU): "
            + ", ".join(f"{name} {cpu.median(name) / n * 1e6:.2f} µs" for name in cpu.values)
        )
    primitives(max(3, rounds // 2))
    if args.plot:
        plot_sweep(n, [int(w) for w in args.workers.split(",")], max(1, rounds // 3), with_aiojobs)


def plot_sweep(n: int, worker_counts: list[int], rounds: int, with_aiojobs: bool) -> None:
    """Throughput (jobs per wall second) against the worker count, awaiting jobs."""
    series: dict[str, list[float]] = {}
    for workers in worker_counts:
        # Fewer jobs for few workers: each waits 1 ms, one after the other.
        jobs = min(n, 200 * workers)
        results = alternate(systems(jobs, workers, True, with_aiojobs), rounds)
        wall = collect(results, lambda m: m.wall)
        for name in wall.values:
            series.setdefault(name, []).append(jobs / wall.median(name))
    line_chart(
        "runtime_throughput",
        f"jobs awaiting sleep({SLEEP}): throughput against workers",
        worker_counts,
        series,
        xlabel="workers (max_concurrent_tasks)",
        ylabel="jobs per second (wall)",
        log_x=True,
    )


if __name__ == "__main__":
    main()
