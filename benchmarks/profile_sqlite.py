"""Where a JobServer on SQLite spends its time per job (a profile, not a benchmark).

Runs the round of ``bench_sqlite.py`` (N enqueued no-op jobs, a JobServer
with the given config, timed until the N-th ``Succeeded`` is stored) and the
raw floor of ``_sqlite_floor.py`` side by side, alternating, and reports per
job:

* wall time, the Trio thread's CPU time and the storage thread's busy time
  (wall and CPU inside its batches), so what is left is waiting on each other;
* storage round trips (batches the storage thread took, thread hops) and
  every SQL statement it ran, by kind (an ``sqlite3`` trace callback);
* with ``--cprofile``, one extra round under cProfile on the Trio thread
  only (cProfile profiles the thread that enables it): the functions with
  the most own time, as calls and microseconds per job.

Everything is instrumented from here, by wrapping the storage thread's batch
runner in this process; nothing in ``trio_monitor`` changes. For the storage
thread's own stacks, run the script under py-spy and summarise per thread::

    py-spy record --native --threads --rate 1000 --format raw -o stacks.txt -- \\
        python benchmarks/profile_sqlite.py --rounds 6
    python benchmarks/profile_sqlite.py --summarize stacks.txt

Usage: ``python benchmarks/profile_sqlite.py [--jobs N] [--rounds R]
[--workers W] [--batch B] [--dir D] [--cprofile] [--summarize STACKS]``
"""

from __future__ import annotations

import collections
import cProfile
import io
import pstats
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_sqlite
import trio
from _harness import alternate, arguments, machine
from _sqlite_floor import raw_round

from trio_monitor.jobs._backends._sqlite._combiner import ConnectionThread

# -- instrumentation of the storage thread ---------------------------------------


class StorageThreadStats:
    """What the storage thread did since the last reset (written from that thread)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.batches = 0
        self.calls = 0
        self.wall = 0.0
        self.cpu = 0.0
        self.statements: collections.Counter[str] = collections.Counter()
        self.trace = False  # count statements (costs the storage thread time)


STATS = StorageThreadStats()
#: Enabled once enqueueing is done, so only the timed part is profiled.
PROFILER: list[cProfile.Profile] = []
_traced: set[int] = set()
_KIND = re.compile(r"\s*(\w+(?:\s+\w+)?)")


def _statement_kind(sql: str) -> str:
    """``UPDATE jobs``, ``SELECT seq``, ``BEGIN IMMEDIATE``, ``RELEASE write``..."""
    match = _KIND.match(sql)
    return match.group(1) if match else sql[:20]


def _instrument() -> None:
    """Wrap ``ConnectionThread._run`` (one batch = one hop) to time and count it."""
    run = ConnectionThread._run

    def timed_run(self: ConnectionThread, batch: list[Any]) -> None:
        conn = self._conn
        if STATS.trace and id(conn) not in _traced:
            _traced.add(id(conn))
            conn.set_trace_callback(lambda sql: STATS.statements.update((_statement_kind(sql),)))
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            run(self, batch)
        finally:
            STATS.cpu += time.thread_time() - cpu
            STATS.wall += time.perf_counter() - wall
            STATS.batches += 1
            STATS.calls += len(batch)

    ConnectionThread._run = timed_run  # type: ignore[method-assign]
    count_trips = bench_sqlite.count_trips

    def count_from_here(storage: Any) -> None:
        # bench_sqlite calls this after enqueueing: the timed part starts now.
        count_trips(storage)
        STATS.reset()
        for profiler in PROFILER:
            profiler.enable()

    bench_sqlite.count_trips = count_from_here


# -- one measured round --------------------------------------------------------------


def server_round(
    path: Path,
    n: int,
    workers: int | None,
    batch: int | None,
    profiler: cProfile.Profile | None = None,
    *,
    trace: bool = False,
) -> dict[str, Any]:
    PROFILER[:] = [] if profiler is None else [profiler]
    STATS.trace = trace
    cpu = time.thread_time()
    try:
        rate = trio.run(bench_sqlite.server_round, path, n, workers, batch)
    finally:
        if profiler is not None:
            profiler.disable()
        PROFILER.clear()
    trio_cpu = time.thread_time() - cpu  # includes enqueueing; see below
    return {
        "rate": rate,
        "trio_cpu": trio_cpu,
        "batches": STATS.batches,
        "calls": STATS.calls,
        "store_wall": STATS.wall,
        "store_cpu": STATS.cpu,
        "statements": dict(STATS.statements),
        "claims": list(bench_sqlite.TRIPS["claim"]),
        "applies": list(bench_sqlite.TRIPS["apply"]),
    }


def enqueue_cpu(path: Path, n: int) -> float:
    """Trio-thread CPU seconds of the untimed part of a round (open, enqueue, close)."""

    async def only_enqueue() -> None:
        from trio_monitor import jobs

        async with jobs.open_storage(f"sqlite:///{path}") as storage:
            for first in range(0, n, 1000):
                await storage.enqueue_many(
                    [jobs.Job.new("noop", {"n": i}) for i in range(first, min(n, first + 1000))]
                )

    cpu = time.thread_time()
    trio.run(only_enqueue)
    return time.thread_time() - cpu


def report(runs: list[dict[str, Any]], floor: list[float], n: int, overhead: float) -> None:
    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    rate = med("rate")
    wall_us = 1e6 / rate
    trio_us = (statistics.median(r["trio_cpu"] for r in runs) - overhead) / n * 1e6
    store_wall_us = med("store_wall") / n * 1e6
    store_cpu_us = med("store_cpu") / n * 1e6
    floor_rate = statistics.median(floor)
    ratios = [r["rate"] / f for r, f in zip(runs, floor, strict=True)]
    print(
        f"JobServer {rate:,.0f} jobs/s ({wall_us:.1f} us/job); raw floor {floor_rate:,.0f} "
        f"jobs/s ({1e6 / floor_rate:.1f} us/job); ratio {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )
    print(f"  Trio thread CPU: {trio_us:.1f} us/job (enqueueing subtracted)")
    print(
        f"  storage thread in batches: {store_wall_us:.1f} us/job wall, "
        f"{store_cpu_us:.1f} us/job CPU"
    )
    print(
        f"  storage batches (thread hops): {med('batches') / n:.3f} per job, "
        f"{med('calls') / med('batches'):.2f} calls per batch; "
        f"claims {statistics.median(r['claims'][0] for r in runs) / n:.3f}/job, "
        f"applies {statistics.median(r['applies'][0] for r in runs) / n:.3f}/job"
    )


def report_statements(run: dict[str, Any], n: int) -> None:
    per_job = {kind: count / n for kind, count in run["statements"].items()}
    print(
        f"SQL statements (a separate round with a trace callback, {run['rate']:,.0f} jobs/s): "
        f"{sum(per_job.values()):.2f} per job, in {run['batches'] / n:.3f} transactions per job"
    )
    for kind, count in sorted(per_job.items(), key=lambda kv: -kv[1]):
        if count >= 0.001:
            print(f"    {kind:<20} {count:.3f} per job")


#: (group, file part, function part): the first match names a function's group.
GROUPS = [
    ("epoll wait (Trio idle)", "", "method 'poll'"),
    ("lock release (wakes the storage thread)", "", "method 'release'"),
    ("cancel scopes and deadlines", "trio/_core/_run.py", "CancelS"),
    ("cancel scopes and deadlines", "trio/_core/_run.py", "deadline"),
    ("cancel scopes and deadlines", "trio/_core/_run.py", "_activate_cancel_status"),
    ("cancel scopes and deadlines", "trio/_core/_run.py", "recalculate"),
    ("cancel scopes and deadlines", "CancelS", ""),
    ("cancel scopes and deadlines", "contextlib.py", ""),
    ("cancel scopes and deadlines", "trio/_timeouts.py", ""),
    ("memory channel hand-off", "trio/_channel.py", ""),
    ("storage calls and thread hop", "_combiner.py", ""),
    ("storage calls and thread hop", "_entry_queue.py", ""),
    ("storage calls and thread hop", "_wakeup_socketpair.py", ""),
    ("storage calls and thread hop", "threading.py", ""),
    ("storage calls and thread hop", "_sqlite/_storage.py", ""),
    ("Trio scheduler, events, checkpoints", "trio/", ""),
    ("JSON (dump_json of states and results)", "json/", ""),
    ("JSON (dump_json of states and results)", "_json", ""),
    ("JSON (dump_json of states and results)", "_model.py", "dump_json"),
    ("JSON (dump_json of states and results)", "", "encode"),
    ("state records, rows, attrs", "_rows.py", ""),
    ("state records, rows, attrs", "_model.py", ""),
    ("state records, rows, attrs", "attrs generated", ""),
    ("state records, rows, attrs", "attr/", ""),
    ("state records, rows, attrs", "", "isoformat"),
    ("state records, rows, attrs", "_clock.py", ""),
    ("processor (per-job run)", "_processor.py", ""),
    ("server: fetcher, dispatch, worker, committer, hooks", "_server.py", ""),
    ("server: fetcher, dispatch, worker, committer, hooks", "_core.py", ""),
    ("benchmark's own hooks", "bench_sqlite.py", ""),
]


def _group(file: str, name: str) -> str:
    for group, file_part, name_part in GROUPS:
        if file_part in file and name_part in name:
            return group
    return "other"


def print_profile(profiler: cProfile.Profile, n: int, top: int) -> None:
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({name})" if line else name
        rows.append((tottime, calls, cumtime, where))
    rows.sort(reverse=True)
    print(f"\ncProfile of the Trio thread, one round: {total / n * 1e6:.1f} us/job profiled")
    print(f"{'own us/job':>10} {'calls/job':>9} {'cum us/job':>10}  function")
    for tottime, calls, cumtime, where in rows[:top]:
        print(f"{tottime / n * 1e6:>10.2f} {calls / n:>9.2f} {cumtime / n * 1e6:>10.2f}  {where}")
    groups: collections.Counter[str] = collections.Counter()
    calls_by_group: collections.Counter[str] = collections.Counter()
    for (file, _, name), (_, calls, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        groups[_group(file, name)] += tottime
        calls_by_group[_group(file, name)] += calls
    busy = sum(t for g, t in groups.items() if not g.startswith(("epoll", "lock release")))
    print(f"\nOwn time by group (profiled; shares of the {busy / n * 1e6:.0f} us/job busy time):")
    for group, tottime in groups.most_common():
        share = "" if group.startswith(("epoll", "lock release")) else f"{tottime / busy:6.1%}"
        print(
            f"  {tottime / n * 1e6:8.1f} us/job {share:>6} {calls_by_group[group] / n:7.1f} "
            f"calls/job  {group}"
        )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    print(out.getvalue())


# -- py-spy's raw stacks, per thread role --------------------------------------------

_IO = ("fdatasync", "fsync", "pwrite64", "pread64", "write (", "read (")


def _role(frames: list[str]) -> str | None:
    text = ";".join(frames)
    if "ConnectionThread._loop" in text:
        return None if "enqueue_many" in text else "storage thread"
    if "raw_round" in text:
        return "raw floor (main thread)"
    if "server_round" in text and "enqueue_many" not in text and "only_enqueue" not in text:
        return "Trio thread, server round"
    return None


def _category(frames: list[str]) -> str:
    leaf = frames[-1]
    if any(f.startswith("Condition.wait") for f in frames) or leaf.startswith("epoll_wait"):
        return "idle (waiting for work or I/O events)"
    if any(leaf.startswith(name) for name in _IO):
        return "file I/O (pwrite, fdatasync)"
    if any("libsqlite3" in f for f in frames):
        return "SQLite C code"
    # A futex wait straight under the interpreter, not under a lock acquire: the GIL.
    if leaf.startswith("0x") and "libc" in leaf and not any("acquire_lock" in f for f in frames):
        return "waiting for the GIL (or a futex)"
    return "Python and C extension code"


def summarize(path: str, top: int) -> None:
    """Shares per thread role from ``py-spy record --native --threads --format raw``.

    Rounds run on new threads, so samples are pooled by role (storage thread,
    Trio thread in a server round, the raw floor), then split into categories
    by their stacks, and the busy samples by the functions on their stacks.
    """
    categories: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]
        role = _role(frames) if frames else None
        if role is None:
            continue
        category = _category(frames)
        categories[role][category] += int(count)
        if not category.startswith("idle"):
            names = {f.split(" (")[0] for f in frames if ".py:" in f}
            inclusive[role].update(dict.fromkeys(names, int(count)))
    for role, counts in categories.items():
        total = sum(counts.values())
        busy = total - sum(c for k, c in counts.items() if k.startswith("idle"))
        print(f"\n{role}: {total} samples, {busy} busy")
        for category, samples in counts.most_common():
            print(f"  {samples / total:6.1%}  {category}")
        print("  busy samples by function on the stack (inclusive):")
        for name, samples in inclusive[role].most_common(top):
            print(f"    {samples / max(busy, 1):6.1%}  {name}")


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=None, help="worker_count (default 5)")
    parser.add_argument("--batch", type=int, default=None, help="fetch_batch_size (default 10)")
    parser.add_argument("--dir", default=None, help="where the database files go")
    parser.add_argument("--cprofile", action="store_true", help="also cProfile one round")
    parser.add_argument("--statements", action="store_true", help="also count SQL statements")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--summarize", default=None, help="summarise a py-spy raw file")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize, args.top)
        return
    n, rounds = args.jobs, args.rounds or 5
    _instrument()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp).resolve()
        counter = iter(range(10**6))

        def fresh() -> Path:
            return root / f"{next(counter)}.db"

        overhead = statistics.median(enqueue_cpu(fresh(), n) for _ in range(3))
        results = alternate(
            {
                "floor": lambda: raw_round(fresh(), n),
                "server": lambda: server_round(fresh(), n, args.workers, args.batch, None),
            },
            rounds,
        )
        print(f"{machine()}; {n} jobs, workers={args.workers}, batch={args.batch}, {rounds} rounds")
        report([r["server"] for r in results], [r["floor"] for r in results], n, overhead)
        if args.statements:
            report_statements(server_round(fresh(), n, args.workers, args.batch, trace=True), n)
        if args.cprofile:
            profiler = cProfile.Profile()
            server_round(fresh(), n, args.workers, args.batch, profiler)
            print_profile(profiler, n, args.top)


if __name__ == "__main__":
    main()
