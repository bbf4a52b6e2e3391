"""Instruction counts: the in-process benchmarks, measured without noise.

The CPU-time figures of ``bench_runtime.py`` and ``bench_monitor.py`` move
by 10-30% from round to round on a shared machine, which is as large as the
differences the targets are about (at most 1.05x a hand-written worker
pool, 1.2x a hand-written abortable task). Valgrind's callgrind counts the
instructions a process executes instead: the same total for the same
program and inputs, whatever else the machine is doing.

Each workload runs in its own process under ``valgrind --tool=callgrind``;
a process that imports the same modules and runs an empty ``trio.run`` (or
``asyncio.run``) is counted too, and subtracted, so that the figures are the
instructions of the work alone. Each count is taken twice, and the script
prints how far apart the two were (under 0.4% in the runs on the docs'
pages: hash seeds and allocation addresses differ between processes). Ratios are
instructions against instructions: the same measure for every system.

Instructions are not time (a cache miss costs more than an add), so this
complements the CPU-time tables, it does not replace them.

Usage::

    python benchmarks/count_instructions.py [-n JOBS] [--only runtime|monitor]

Needs ``valgrind`` (Debian: ``apt-get install valgrind``); about 2 minutes
per workload at the default size.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: group -> (baseline system, [(system, what runs)])
WORKLOADS: dict[str, list[tuple[str, str]]] = {
    "runtime, no-op jobs": [
        ("trio pool", "pool:noop"),
        ("runtime", "runtime:noop"),
        ("aiojobs", "aiojobs:noop"),
    ],
    "runtime, jobs awaiting sleep(0.001)": [
        ("trio pool", "pool:sleep"),
        ("runtime", "runtime:sleep"),
        ("aiojobs", "aiojobs:sleep"),
    ],
    "monitor, batches of 1,000": [
        ("hand-written", "hand:batches"),
        ("monitor", "monitor:batches"),
        ("bare", "bare:batches"),
    ],
    "monitor, all at once": [
        ("hand-written", "hand:once"),
        ("monitor", "monitor:once"),
        ("bare", "bare:once"),
    ],
}


def child(what: str, n: int) -> None:
    """Run one workload (in the process valgrind counts)."""
    import bench_monitor
    import bench_runtime
    import trio

    system, shape = what.split(":")
    if system == "empty-trio":
        trio.run(trio.lowlevel.checkpoint)
    elif system == "empty-asyncio":
        asyncio.run(asyncio.sleep(0))
    elif system in ("runtime", "pool"):
        job = bench_runtime.trio_sleep if shape == "sleep" else bench_runtime.trio_noop
        run = bench_runtime.runtime_jobs if system == "runtime" else bench_runtime.pool_jobs
        trio.run(run, n, bench_runtime.WORKERS, job)
    elif system == "aiojobs":
        job = bench_runtime.asyncio_sleep if shape == "sleep" else bench_runtime.asyncio_noop
        asyncio.run(bench_runtime.aiojobs_jobs(n, bench_runtime.WORKERS, job))
    else:
        variant = {
            "monitor": bench_monitor.run_monitor,
            "hand": bench_monitor.run_hand_written,
            "bare": bench_monitor.run_bare,
        }[system]
        trio.run(variant, n, bench_monitor.BATCH if shape == "batches" else n)


def count(what: str, n: int) -> int:
    """Instructions executed by a child process running ``what``."""
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            what,
            "-n",
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{result.stderr}")
    return int(match.group(1))


def stable_count(what: str, n: int) -> tuple[int, float]:
    """The count, taken twice; and how far apart the two were (a fraction)."""
    first, second = count(what, n), count(what, n)
    return (first + second) // 2, abs(first - second) / max(first, second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="jobs or tasks per run")
    parser.add_argument("--only", choices=["runtime", "monitor"], help="one component only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    try:
        import aiojobs  # noqa: F401
    except ImportError:
        with_aiojobs = False
    else:
        with_aiojobs = True
    empty = {name: stable_count(f"{name}:-", args.n) for name in ("empty-trio", "empty-asyncio")}
    worst = max(spread for _, spread in empty.values())
    print(f"{args.n:,} jobs or tasks per run; each count taken twice, the empty run subtracted")
    for group, systems in WORKLOADS.items():
        if args.only and not group.startswith(args.only):
            continue
        print(f"\n{group}")
        print(f"{'system':<14}{'instructions per job':>22}{'vs ' + systems[0][0]:>18}")
        base: float | None = None
        for system, what in systems:
            if system == "aiojobs" and not with_aiojobs:
                continue
            total, spread = stable_count(what, args.n)
            worst = max(worst, spread)
            empty_total = empty["empty-asyncio" if system == "aiojobs" else "empty-trio"][0]
            per_job = (total - empty_total) / args.n
            if base is None:
                base = per_job
            print(f"{system:<14}{per_job:>22,.0f}{per_job / base:>18.3f}")
    print(f"\nlargest difference between the two counts of one run: {worst:.2e}")


if __name__ == "__main__":
    main()
