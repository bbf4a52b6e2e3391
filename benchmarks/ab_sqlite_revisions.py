"""A/B of the job server on SQLite between two source trees (say, before and after a change).

Each round runs, in an order rotated every round (the shared harness), the
raw floor and one ``bench_sqlite.py`` server round per tree and setting,
each in a fresh subprocess whose ``PYTHONPATH`` is that tree, so that two
revisions of ``trio_monitor`` are measured side by side on the same disk at
the same time. Only the round itself is timed (inside the subprocess).

    git worktree add /tmp/before <commit>     # or: git archive <commit> | tar -x -C /tmp/before
    python benchmarks/ab_sqlite_revisions.py before=/tmp/before after=. \\
        [--setting W,B[,FEATURE]]... [--jobs N] [--rounds R]

A setting is ``worker_count,fetch_batch_size[,feature]`` (empty: the
ServerConfig default; features: ``lock``, ``max_running``, as in
``bench_sqlite.py``); the default is the default config only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _harness import alternate, arguments, collect, machine, table

ROUND = """
import logging, sys, tempfile
from pathlib import Path
sys.path.insert(0, "benchmarks")
import trio
logging.basicConfig(level=logging.WARNING)
kind, n = sys.argv[1], int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp).resolve() / "jobs.db"
    if kind == "floor":
        from _sqlite_floor import raw_round
        print(raw_round(path, n))
    else:
        import bench_sqlite
        workers, batch, feature = (kind.split(",") + [""])[:3]
        print(trio.run(bench_sqlite.server_round, path, n,
                       int(workers) if workers else None, int(batch) if batch else None, feature))
"""


def one_round(tree: Path, kind: str, n: int) -> float:
    """One round of ``kind`` ("floor" or a setting) with ``tree``'s code; jobs per second."""
    out = subprocess.run(
        [sys.executable, "-c", ROUND, kind, str(n)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": "."},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="name=path of a source tree")
    parser.add_argument("--setting", action="append", default=None, help="W,B[,FEATURE]")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per round (default 5000)")
    args = parser.parse_args()
    n = args.jobs or (500 if args.quick else 5_000)
    rounds = args.rounds or (1 if args.quick else 5)
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.trees)}
    first = next(iter(trees.values()))
    # Each tree runs its own bench_sqlite.server_round (same signature since the job-control rows).
    systems = {"raw sqlite3, 2 tx per job": lambda: one_round(first, "floor", n)}
    for setting in args.setting or [","]:
        for name, tree in trees.items():
            systems[f"{name}: {setting or 'defaults'}"] = lambda tree=tree, setting=setting: (
                one_round(tree, setting, n)
            )
    results = alternate(systems, rounds, progress=True)
    print(f"\n{n} no-op jobs per round, {rounds} round(s) after a warm-up; {machine()}")
    print(
        table(
            collect(results, float),
            unit="jobs/s",
            spec=",.0f",
            baselines=["raw sqlite3, 2 tx per job"],
        )
    )


if __name__ == "__main__":
    main()
