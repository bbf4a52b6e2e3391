"""Benchmark: resident memory while a monitor and a runtime run 1,000,000 short tasks.

Each system runs in a process of its own (this script, started again with
``--child SYSTEM``), so that one's memory cannot hide in another's:

* ``monitor``: ``TaskMonitor.spawn_finite`` of a no-op, in batches of 1,000
  (spawn the batch, wait until it has finished), in one ``open_monitor``.
* ``hand-written``: the same with the hand-written abortable task of
  ``bench_monitor.py`` (a ``CancelScope`` kept in a dict, ``except
  Exception``).
* ``runtime``: ``await handle.spawn_wait(noop)`` into one ``open_runtime()``
  with the default config (queue 1,024, 128 at once).
* ``trio pool``: the same into the hand-written worker pool of
  ``bench_runtime.py`` (128 workers on a memory channel of 1,024).

Every 50,000 tasks the child reads its resident set size (``VmRSS`` in
``/proc/self/status``). The first 200,000 tasks are the warm-up; "growth
after warm-up" is the last sample minus the sample at the end of the
warm-up, and "peak above warm-up" the highest sample minus that one. Flat
memory means both stay within allocator noise (a few hundred KiB), whatever
the number of tasks.

    python benchmarks/bench_memory.py [--quick] [-n N] [--rounds R] [--plot]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable

import trio
from _harness import alternate, arguments, collect, line_chart, machine, table

import trio_monitor as tm

SAMPLE_EVERY = 50_000
WARM_UP = 200_000
BATCH = 1_000


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError("VmRSS")  # pragma: no cover - Linux only


async def noop() -> None:
    pass


async def monitor_tasks(n: int, sample: Callable[[int], None]) -> None:
    async with tm.open_monitor() as monitor:
        monitor.subscribe()
        for done in range(0, n, BATCH):
            for _ in range(BATCH):
                monitor.spawn_finite("noop", noop)
            while monitor.statistics().active_tasks:
                await trio.lowlevel.checkpoint()
            sample(done + BATCH)


async def hand_written_tasks(n: int, sample: Callable[[int], None]) -> None:
    scopes: dict[int, trio.CancelScope] = {}

    async def supervised(key: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                try:
                    await noop()
                except Exception as exc:  # pragma: no cover - never raises
                    print("task failed:", exc, file=sys.stderr)
        finally:
            del scopes[key]

    async with trio.open_nursery() as nursery:
        for done in range(0, n, BATCH):
            for key in range(done, done + BATCH):
                scope = scopes[key] = trio.CancelScope()
                nursery.start_soon(supervised, key, scope)
            while scopes:
                await trio.lowlevel.checkpoint()
            sample(done + BATCH)


async def runtime_tasks(n: int, sample: Callable[[int], None]) -> None:
    async with tm.open_runtime() as runtime:
        spawn_wait = runtime.handle().spawn_wait
        for done in range(1, n + 1):
            await spawn_wait(noop)
            sample(done)


async def pool_tasks(n: int, sample: Callable[[int], None]) -> None:
    send, receive = trio.open_memory_channel[Callable[[], Awaitable[None]]](1_024)

    async def worker() -> None:
        async for fn in receive:
            try:
                await fn()
            except Exception as exc:  # pragma: no cover - never raises
                print("job failed:", exc, file=sys.stderr)

    async with trio.open_nursery() as nursery:
        for _ in range(128):
            nursery.start_soon(worker)
        async with send:
            for done in range(1, n + 1):
                await send.send(noop)
                sample(done)


SYSTEMS: dict[str, Callable[[int, Callable[[int], None]], Awaitable[None]]] = {
    "monitor": monitor_tasks,
    "hand-written": hand_written_tasks,
    "runtime": runtime_tasks,
    "trio pool": pool_tasks,
}


def child(system: str, n: int) -> None:
    samples: list[tuple[int, int]] = [(0, rss_kib())]

    def sample(done: int) -> None:
        if done % SAMPLE_EVERY == 0:
            samples.append((done, rss_kib()))

    trio.run(SYSTEMS[system], n, sample)
    print(json.dumps(samples))


def run_child(system: str, n: int) -> list[tuple[int, int]]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", system, "-n", str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return [(done, kib) for done, kib in json.loads(out.stdout.splitlines()[-1])]


def after_warm_up(samples: list[tuple[int, int]]) -> tuple[int, int, int]:
    """RSS at the end of the warm-up, growth since then, and peak above it (KiB)."""
    base = next(kib for done, kib in samples if done >= WARM_UP)
    return base, samples[-1][1] - base, max(kib for done, kib in samples if done >= WARM_UP) - base


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="tasks per run (default 1,000,000)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (300_000 if args.quick else 1_000_000)
    if args.child:
        child(args.child, n)
        return
    if n <= WARM_UP or n % SAMPLE_EVERY:
        parser.error(f"-n must be a multiple of {SAMPLE_EVERY:,} above {WARM_UP:,}")
    rounds = args.rounds or 1
    print(f"{machine()}; Trio {trio.__version__}, trio_monitor {tm.__version__}")
    runs = {name: (lambda name=name: run_child(name, n)) for name in SYSTEMS}
    results = alternate(runs, rounds, warmup=False)
    print(f"\n{n:,} short tasks per run, {rounds} run(s) per system, each in its own process")
    for label, index, scale in (
        ("RSS after the warm-up", 0, 1 / 1024),
        ("growth after the warm-up", 1, 1.0),
        ("peak above the warm-up", 2, 1.0),
    ):
        figures = collect(results, lambda samples, i=index: float(after_warm_up(samples)[i]))
        unit = "MiB" if scale != 1.0 else "KiB"
        print(label)
        print(table(figures, unit=unit, spec=".1f" if scale != 1.0 else ".0f", scale=scale))
    if args.plot:
        last = results[-1]
        xs = [done / 1000 for done, _ in last["monitor"]]
        line_chart(
            "memory_rss",
            f"resident memory over {n:,} short tasks",
            xs,
            {name: [kib / 1024 for _, kib in samples] for name, samples in last.items()},
            xlabel="tasks run (thousands)",
            ylabel="RSS (MiB)",
        )


if __name__ == "__main__":
    main()
