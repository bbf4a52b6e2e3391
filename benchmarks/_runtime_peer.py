"""One measured run for ``bench_runtime.py``, in a process of its own.

Usage: ``python benchmarks/_runtime_peer.py MODE N``, MODE one of:

* ``runtime``: N no-op jobs through ``RuntimeHandle.spawn_wait`` into
  ``tm.open_runtime()`` with the default config (queue 1,024, 128 at once),
  then the block's drain.
* ``limiter``: N ``nursery.start_soon`` tasks, each ``async with
  trio.CapacityLimiter(128): await noop()``.
* ``aiojobs``: N ``await scheduler.spawn(noop())`` into
  ``aiojobs.Scheduler(limit=128, pending_limit=1024)`` on asyncio, then
  ``wait_and_close()``.

Imports happen before the clock starts. Prints one JSON line: wall and CPU
seconds of the run, the process's peak resident set size (``VmHWM``) and its
resident size just before the run (``VmRSS``), in KiB.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)  # pragma: no cover


async def noop() -> None:
    pass


async def runtime_jobs(n: int) -> None:
    """N no-op jobs through ``spawn_wait`` into a default runtime, then its drain."""
    import trio_monitor as tm

    async with tm.open_runtime() as runtime:
        spawn_wait = runtime.handle().spawn_wait
        for _ in range(n):
            await spawn_wait(noop)
    assert runtime.metrics().succeeded == n


async def limiter_jobs(n: int) -> None:
    """N ``start_soon`` tasks behind one ``CapacityLimiter(128)``."""
    import trio

    limiter = trio.CapacityLimiter(128)
    done = 0

    async def job() -> None:
        nonlocal done
        async with limiter:
            await noop()
        done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(job)
    assert done == n


def run_runtime(n: int) -> None:
    import trio

    trio.run(runtime_jobs, n)


def run_limiter(n: int) -> None:
    import trio

    trio.run(limiter_jobs, n)


def run_aiojobs(n: int) -> None:
    import asyncio

    import aiojobs

    async def main() -> None:
        scheduler = aiojobs.Scheduler(limit=128, pending_limit=1024)
        for _ in range(n):
            await scheduler.spawn(noop())
        await scheduler.wait_and_close()

    asyncio.run(main())


MODES: dict[str, Callable[[int], None]] = {
    "runtime": run_runtime,
    "limiter": run_limiter,
    "aiojobs": run_aiojobs,
}


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    run = MODES[mode]
    # Import everything the mode needs before timing.
    if mode == "aiojobs":
        import asyncio  # noqa: F401

        import aiojobs  # noqa: F401
    else:
        import trio  # noqa: F401

        import trio_monitor  # noqa: F401
    rss_before = _status_kib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    run(n)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        json.dumps(
            {
                "mode": mode,
                "n": n,
                "wall": wall,
                "cpu": cpu,
                "peak_rss_kib": _status_kib("VmHWM"),
                "rss_before_kib": rss_before,
            }
        )
    )


if __name__ == "__main__":
    main()
