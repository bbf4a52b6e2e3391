"""Benchmark: the cost of one restart cycle of a supervised child.

A child becomes ready (``task_status.started()``) and raises at once; it is
reported and restarted, N times, until run N + 1 stays up. Every report is
received by a consumer task. Three ways:

* ``supervisor``: :func:`trio_monitor.open_supervisor` (ONE_FOR_ONE,
  ``Backoff(initial=0)``, an intensity limit it never reaches) with one
  subscriber: fail, report (a ``TaskFailure`` with the formatted
  traceback), restart, ready.
* ``loop+start``: the hand-written ``while True: try/except`` restart loop
  with the same readiness protocol: each run is started with
  ``nursery.start`` in a nursery of its own, the exception is caught
  (``except Exception``, which is how a nursery's ``ExceptionGroup`` is
  caught), its traceback formatted and sent to the consumer, and the loop
  goes round again. The honest baseline: the same protocol and report.
* ``loop``: the bare loop: the child is awaited in the loop's own task
  (no readiness, no task of its own, so it cannot be stopped without
  stopping the loop), the exception reported the same way. The floor.

Each run is a fresh ``trio.run``. One warm-up of each, then rounds in an
order rotated every round (the shared harness, ``benchmarks/_harness.py``);
the table gives median CPU times (``time.process_time``) over the rounds
with their range, and the medians of the per-round ratios. Run ``python
benchmarks/bench_supervisor.py`` (``--quick`` for a smoke run, ``--plot``
for a chart).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from _harness import alternate, arguments, bar_chart, collect, machine, measure, table

import trio_monitor as tm


def crashing_child(n: int, done: trio.Event) -> Callable[..., Awaitable[None]]:
    """A child whose first ``n`` runs fail once ready; run ``n + 1`` stays up."""
    runs = 0

    async def child(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs > n:
            done.set()
            await trio.sleep_forever()
        raise ValueError("crash")

    return child


async def consume(receive: trio.MemoryReceiveChannel[Any]) -> None:
    async for _ in receive:
        pass


async def run_supervisor(n: int) -> None:
    done = trio.Event()
    async with (
        tm.open_supervisor(
            max_restarts=n + 1, within=math.inf, backoff=tm.Backoff(initial=0, jitter=0)
        ) as sup,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(consume, sup.subscribe(math.inf))
        await sup.start("child", crashing_child(n, done))
        await done.wait()
        nursery.cancel_scope.cancel()


def report(send: trio.MemorySendChannel[Any], exc: BaseException) -> None:
    # What a Panic carries: the exception and its formatted traceback.
    send.send_nowait(("child", exc, "".join(traceback.format_exception(exc))))


async def run_loop_with_start(n: int) -> None:
    await restart_loop(n, with_start=True)


async def run_loop(n: int) -> None:
    await restart_loop(n, with_start=False)


async def restart_loop(n: int, *, with_start: bool) -> None:
    """The hand-written ``while True: try/except`` restart loop.

    ``with_start``: each run is started with ``nursery.start`` in a nursery
    of its own; otherwise the child is awaited in the loop's own task.
    """
    done = trio.Event()
    child = crashing_child(n, done)
    send, receive = trio.open_memory_channel[Any](math.inf)

    async def keep_running() -> None:
        while True:
            try:
                if with_start:
                    async with trio.open_nursery() as run:
                        await run.start(child)
                else:
                    await child()
            except Exception as exc:
                # A nursery wraps the child's exception: report the child's own.
                report(send, exc.exceptions[0] if isinstance(exc, ExceptionGroup) else exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, receive)
        nursery.start_soon(keep_running)
        await done.wait()
        nursery.cancel_scope.cancel()


VARIANTS: dict[str, Callable[[int], Awaitable[None]]] = {
    "supervisor": run_supervisor,
    "loop+start": run_loop_with_start,
    "loop": run_loop,
}


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=None, help="restart cycles per run (10,000)")
    args = parser.parse_args()
    n = args.n or (1_000 if args.quick else 10_000)
    rounds = args.rounds or (3 if args.quick else 9)

    systems = {
        name: partial(measure, partial(trio.run, variant, n)) for name, variant in VARIANTS.items()
    }
    cpu = collect(alternate(systems, rounds), lambda m: m.cpu)
    print(
        f"supervisor: {n:,} restart cycles (fail, report, restart, ready), "
        f"{rounds} rounds after a warm-up: CPU time"
    )
    print(f"{machine()}; Trio {trio.__version__}")
    print(table(cpu, unit="s", baselines=["loop+start", "loop"]))
    print(
        "per cycle (median): "
        + ", ".join(f"{name} {cpu.median(name) / n * 1e6:.1f} µs" for name in cpu.values)
    )
    if args.plot:
        bar_chart(
            "supervisor_restarts",
            f"{n:,} restart cycles",
            cpu,
            label="µs of CPU per restart cycle (median, range)",
            scale=1e6 / n,
        )


if __name__ == "__main__":
    main()
