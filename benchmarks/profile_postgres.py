"""Where enqueue→start latency and multi-process throughput go on PostgreSQL.

A profile, not a benchmark: it instruments the job server from the outside
(wrappers installed in this process around the listener thread, the call
runner's worker threads and ``storage.claim``; nothing in ``trio_monitor``
changes) and prints what each step of the path costs.

``latency``: a JobServer with C idle workers in this process; a producer
process enqueues one job at a time with a gap (``storage.enqueue``), and
stamps ``time.time()`` before and after. For every job the wall-clock
stamps of the steps between enqueue and the worker's first line are
matched up, and each step's p50 / p99 / max is printed:

=================  ==========================================================
enqueue            the producer's ``storage.enqueue`` (INSERT, NOTIFY, commit)
notify delivery    producer's enqueue returned → the listener thread has it
to trio            listener thread → ``WakeUp.notify`` runs on the Trio thread
to claim           Trio wake-up → the fetcher calls ``storage.claim``
thread hop         ``storage.claim`` called → its worker thread runs
getconn            the worker thread takes a pooled connection
claim statement    the claim's UPDATE … RETURNING and its commit
back to trio       statement done → ``storage.claim`` returns in Trio
dispatch           claim returned → the worker function's first line
=================  ==========================================================

``processes``: N jobs enqueued first; then P server processes (C workers
each) on the same database, started together once all are connected, timed
from the start signal until the last outcome is stored (each process stops
when the database holds N succeeded jobs). P values alternate by round.
Claim statement times are recorded per claim, to show whether they grow as
a run goes on (``--jobs`` 1000 against 5000 is the question).

    python benchmarks/profile_postgres.py latency [--jobs 300] [--gap 0.02] [--concurrency 10]
    python benchmarks/profile_postgres.py processes [--jobs 5000] [--processes 1,3] [--rounds 3]

Both start a throwaway cluster (``tests/pg_cluster.py``) at PostgreSQL's
default durability; ``--fsync-off`` for the non-durable variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from _harness import ROOT, machine

sys.path.insert(0, str(ROOT))

#: (kind, time.time(), extra) from every thread of this process.
EVENTS: list[tuple[str, float, Any]] = []
_lock = threading.Lock()


def stamp(kind: str, extra: Any = None) -> None:
    t = time.time()
    with _lock:
        EVENTS.append((kind, t, extra))


def instrument() -> None:
    """Wrap the listener and the call runner's thread side (class level, this process)."""
    from trio_monitor.jobs._backends._postgres import _calls

    listener_wake, in_trio = _calls.Listener._wake_from_thread, _calls.Listener._wake_in_trio
    call_run, getconn = _calls._Call.run, _calls._Call._getconn

    def wake_from_thread(self: Any, channel: str) -> None:
        stamp("listener")
        listener_wake(self, channel)

    def wake_in_trio(self: Any, channel: str) -> None:
        stamp("to_trio")
        in_trio(self, channel)

    def is_claim(call: Any) -> bool:
        return bool(call._fn.__qualname__.startswith("PostgresStorage.claim"))

    def run(self: Any) -> Any:
        if not is_claim(self):
            return call_run(self)
        stamp("thread")
        try:
            return call_run(self)
        finally:
            stamp("statement_done")

    def timed_getconn(self: Any, pool: Any) -> Any:
        conn = getconn(self, pool)
        if is_claim(self):
            stamp("got_conn")
        return conn

    _calls.Listener._wake_from_thread = wake_from_thread  # type: ignore[method-assign]
    _calls.Listener._wake_in_trio = wake_in_trio  # type: ignore[method-assign]
    _calls._Call.run = run  # type: ignore[method-assign]
    _calls._Call._getconn = timed_getconn  # type: ignore[method-assign]


def wrap_claim(storage: Any) -> None:
    claim = storage.claim

    async def stamped_claim(**kwargs: Any) -> Any:
        stamp("claim_call")
        got = await claim(**kwargs)
        stamp("claim_return", len(got))
        return got

    storage.claim = stamped_claim


# -- children ------------------------------------------------------------------------


def producer(url: str, n: int, gap: float) -> None:
    import trio

    from trio_monitor import jobs

    sent: list[tuple[float, float]] = []

    async def main() -> None:
        async with jobs.open_storage(url) as storage:
            for i in range(n):
                await trio.sleep(gap)
                before = time.time()
                await storage.enqueue(jobs.Job.new("noop", {"i": i, "t": before}))
                sent.append((before, time.time()))

    trio.run(main)
    print("RESULT " + json.dumps(sent), flush=True)


def process_worker(url: str, n: int, concurrency: int) -> None:
    """One of P server processes: connect, say READY, start on GO, stop at N succeeded."""
    import trio

    from trio_monitor import jobs

    instrument()
    workers = jobs.WorkerRegistry()
    done = 0
    last = 0.0

    @workers.worker("noop")
    async def noop(job: jobs.Job, ctx: Any) -> None:
        pass

    def stored(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        nonlocal done, last
        if isinstance(new, jobs.Succeeded):
            done += 1
            last = time.time()

    async def main() -> dict[str, Any]:
        async with jobs.open_storage(url) as storage:
            wrap_claim(storage)
            config = jobs.ServerConfig(
                server_name=f"bench-{os.getpid()}",
                worker_count=concurrency,
                fetch_batch_size=concurrency,
                polling_interval=0.05,
            )
            print("READY", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            EVENTS.clear()
            start, cpu = time.time(), time.process_time()
            server = jobs.JobServer(config, storage, workers, on_state_change=stored)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                # Other processes finish jobs too: the database says when all are
                # done. Two index lookups (not a count over the table, which
                # took PostgreSQL a few ms a time), every 0.1 s: the span ends
                # at the last stored outcome (``last``), not at this poll.
                while await unfinished(storage):  # noqa: ASYNC110
                    await trio.sleep(0.1)
                await server.stop()
        cpu = time.process_time() - cpu
        return {"start": start, "last": last, "done": done, "cpu": cpu, "claims": claim_times()}

    print("RESULT " + json.dumps(trio.run(main)), flush=True)


async def unfinished(storage: Any) -> bool:
    """Whether any job is still Enqueued or Processing (two index lookups)."""
    from trio_monitor import jobs

    for state in (jobs.Enqueued, jobs.Processing):
        if await storage.list_jobs(state=state, limit=1):
            return True
    return False


def claim_times() -> list[tuple[float, float, int]]:
    """(when, statement seconds, jobs) per claim, from the stamps of this process."""
    out: list[tuple[float, float, int]] = []
    thread_start: float | None = None
    call: float | None = None
    statement: float | None = None
    for kind, t, extra in EVENTS:
        if kind == "claim_call":
            call, thread_start, statement = t, None, None
        elif kind == "got_conn" and call is not None and thread_start is None:
            thread_start = t
        elif kind == "statement_done" and thread_start is not None and statement is None:
            statement = t - thread_start
        elif kind == "claim_return" and call is not None and statement is not None:
            out.append((t, statement, int(extra)))
            call = None
    return out


# -- latency ------------------------------------------------------------------------------

STEPS = [
    ("enqueue", "sent", "enqueued"),
    ("notify delivery", "enqueued", "listener"),
    ("to trio", "listener", "to_trio"),
    ("to claim", "to_trio", "claim_call"),
    ("thread hop", "claim_call", "thread"),
    ("getconn", "thread", "got_conn"),
    ("claim statement", "got_conn", "statement_done"),
    ("back to trio", "statement_done", "claim_return"),
    ("dispatch", "claim_return", "started"),
]


def latency(url: str, n: int, gap: float, concurrency: int) -> list[dict[str, float]]:
    import trio

    from trio_monitor import jobs

    instrument()
    started: dict[int, float] = {}
    all_started = trio.Event()
    workers = jobs.WorkerRegistry()

    @workers.worker("noop")
    async def noop(job: jobs.Job, ctx: Any) -> None:
        started[job.payload["i"]] = time.time()
        if len(started) == n:
            all_started.set()

    async def main() -> list[tuple[float, float]]:
        async with jobs.open_storage(url) as storage:
            wrap_claim(storage)
            config = jobs.ServerConfig(
                server_name="bench",
                worker_count=concurrency,
                fetch_batch_size=concurrency,
                polling_interval=1.0,
            )
            server = jobs.JobServer(config, storage, workers)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                await trio.sleep(0.5)  # idle
                EVENTS.clear()
                cmd = [sys.executable, __file__, "producer", "--url", url, "--jobs", str(n)]
                done = await trio.run_process(
                    [*cmd, "--gap", str(gap)], capture_stdout=True, cwd=ROOT
                )
                await all_started.wait()
                await server.stop()
        for line in done.stdout.decode().splitlines():
            if line.startswith("RESULT "):
                sent: list[tuple[float, float]] = json.loads(line[7:])
                return sent
        raise RuntimeError("the producer printed no result")

    sent = trio.run(main)
    events = sorted(EVENTS, key=lambda e: e[1])
    traces = []
    for i, (before, after) in enumerate(sent):
        trace = {"sent": before, "enqueued": after, "started": started[i]}
        # The last stamp of each kind before this job's start; after its enqueue began.
        for kind, t, _ in events:
            if before <= t <= started[i]:
                trace[kind] = t
        traces.append(trace)
    return traces


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report_latency(traces: list[dict[str, float]]) -> None:
    totals = [t["started"] - t["sent"] for t in traces]
    print(f"{'step':<18} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'jobs':>5}")
    for name, a, b in [*STEPS, ("TOTAL enqueue→start", "sent", "started")]:
        values = [(t[b] - t[a]) * 1000 for t in traces if a in t and b in t]
        if values:
            print(
                f"{name:<18} {percentile(values, 0.5):>8.2f} {percentile(values, 0.99):>8.2f} "
                f"{max(values):>8.2f} {len(values):>5}"
            )
    cutoff = percentile(totals, 0.95)
    slow = [t for t in traces if t["started"] - t["sent"] >= cutoff]
    print(f"\nslowest 5% (enqueue→start >= {cutoff * 1000:.2f} ms): the biggest step of each")
    biggest: dict[str, int] = {}
    for t in slow:
        steps = [(t[b] - t[a], name) for name, a, b in STEPS if a in t and b in t]
        biggest[max(steps)[1]] = biggest.get(max(steps)[1], 0) + 1
    for name, count in sorted(biggest.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<18} {count}")
    for t in slow[:8]:
        print(
            "  "
            + " ".join(
                f"{name.split()[0]}={(t[b] - t[a]) * 1000:.1f}"
                for name, a, b in STEPS
                if a in t and b in t
            )
        )


# -- processes -----------------------------------------------------------------------------


def cluster_cpu(datadir: Path) -> float:
    """CPU seconds the cluster has used: the postmaster, its live children, and the reaped ones.

    Backends that ended count through the postmaster's cutime/cstime (it
    waits for them). Linux only: reads /proc.
    """
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime
        elif ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def processes_round(
    url: str,
    n: int,
    count: int,
    concurrency: int,
    pg_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """P server processes on N jobs; ``pg_cpu()`` (if given) reads the cluster's CPU seconds."""
    import bench_postgres

    bench_postgres.trio_monitor_enqueue(url, n, 0.0)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "worker",
                "--url",
                url,
                "--jobs",
                str(n),
                "-c",
                str(concurrency),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError("a worker process did not start")
    pg_before = pg_cpu() if pg_cpu else 0.0
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("GO\n")
        proc.stdin.flush()
    results: list[dict[str, Any]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        results.extend(
            json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")
        )
    if len(results) != count:
        raise RuntimeError("a worker process failed")
    time.sleep(0.2)  # the postmaster reaps the ended backends
    pg_used = pg_cpu() - pg_before if pg_cpu else None
    span = max(r["last"] for r in results) - min(r["start"] for r in results)
    claims = sorted(c for r in results for c in r["claims"])
    return {
        "rate": n / span,
        "cpu": sum(r["cpu"] for r in results) / span,  # cores used by the server processes
        "cpu_per_job": sum(r["cpu"] for r in results) / n,
        # Includes the servers' stop and the backends' exit, after the span.
        "pg_cpu_per_job": None if pg_used is None else pg_used / n,
        "share": [r["done"] for r in results],
        "claims": claims,
    }


def claim_summary(claims: list[list[float]]) -> str:
    """Median claim statement ms and jobs per claim, in the first and last fifth of the run."""
    if len(claims) < 10:
        return "too few claims"
    fifth = len(claims) // 5
    parts = []
    for name, part in (("first", claims[:fifth]), ("last", claims[-fifth:])):
        ms = statistics.median(c[1] for c in part) * 1000
        jobs = statistics.mean(c[2] for c in part)
        parts.append(f"{name} fifth {ms:.2f} ms/claim, {jobs:.1f} jobs/claim")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["latency", "processes", "producer", "worker"])
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--processes", default="1,3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsync-off", action="store_true")
    parser.add_argument(
        "--claim-commit",
        choices=["on", "off"],
        help="open the storage with claim_synchronous_commit=on|off (default: not set)",
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "producer":
        producer(args.url, args.jobs, args.gap)
        return
    if args.mode == "worker":
        process_worker(args.url, args.jobs, args.concurrency)
        return

    from tests.pg_cluster import PgCluster

    durability = "fsync off" if args.fsync_off else "default durability (fsync on)"
    if args.claim_commit:
        durability += f", claim_synchronous_commit={args.claim_commit}"
    option = f"?claim_synchronous_commit={args.claim_commit}" if args.claim_commit else ""
    with PgCluster.start(durable=not args.fsync_off) as cluster:
        if args.mode == "latency":
            n = args.jobs or 300
            traces = latency(cluster.create_database("lat") + option, n, args.gap, args.concurrency)
            print(f"{machine()}; PostgreSQL at {durability}")
            print(
                f"{n} jobs, one at a time {args.gap * 1000:.0f} ms apart, {args.concurrency} idle"
            )
            report_latency(traces)
            return
        n = args.jobs or 5000
        counts = [int(p) for p in args.processes.split(",")]
        url = cluster.create_database("warm") + option
        processes_round(url, min(n, 500), counts[-1], args.concurrency)
        rates: dict[int, list[float]] = {p: [] for p in counts}
        for round_ in range(args.rounds):
            order = counts[round_ % len(counts) :] + counts[: round_ % len(counts)]
            for p in order:
                url = cluster.create_database(f"p{p}_{round_}") + option
                got = processes_round(
                    url, n, p, args.concurrency, partial(cluster_cpu, cluster.datadir)
                )
                rates[p].append(got["rate"])
                print(
                    f"round {round_ + 1}, {p} process(es): {got['rate']:,.0f} jobs/s, "
                    f"jobs per process {got['share']}, {got['cpu']:.2f} cores busy; "
                    f"CPU per job: servers {got['cpu_per_job'] * 1e6:.0f} us, "
                    f"PostgreSQL {got['pg_cpu_per_job'] * 1e6:.0f} us; "
                    f"{claim_summary(got['claims'])}; "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    print(f"\n{machine()}; PostgreSQL at {durability}; {n} jobs, {args.concurrency} workers each")
    for p in counts:
        print(
            f"{p} process(es): {statistics.median(rates[p]):,.0f} jobs/s median "
            f"({' '.join(f'{r:,.0f}' for r in rates[p])})"
        )
    if 1 in rates:
        for p in counts:
            ratios = [a / b for a, b in zip(rates[p], rates[1], strict=True)]
            print(f"{p} vs 1: {statistics.median(ratios):.2f}x (per round {ratios})")


if __name__ == "__main__":
    main()
