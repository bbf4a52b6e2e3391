"""The job server on PostgreSQL against procrastinate and saq (their Postgres queue).

Usage: ``python benchmarks/bench_postgres.py [--quick] [--rounds R] [--jobs N]
[--concurrency C] [--systems trio_monitor,procrastinate,saq] [--processes P] [--fsync-off]
[--claim-commit on|off] [--plot]``

Starts a throwaway PostgreSQL cluster (``tests/pg_cluster.py``) at
PostgreSQL's default durability (fsync on; ``--fsync-off`` for the extra,
non-durable row), runs every system once untimed (500 jobs) to warm up,
then for each round and each system (in an order rotated every round, a
fresh database each time):

* **throughput**: N no-op jobs are enqueued first (not timed) by a producer
  process; then a worker process with C concurrent workers opens its
  connections (not timed), starts its worker, and is timed from just before
  the worker starts to the end of the N-th job: for trio_monitor, when the
  N-th ``Succeeded`` outcome is stored (``on_state_change`` runs after the
  write); for the peers, when the N-th job's function has run (their
  outcome writes come after that, so the span favours them slightly).
  Reported: jobs/s, median and runs.
* **latency**: a worker process with C idle workers; a separate producer
  process enqueues one job at a time with a gap, stamping ``time.time()``
  just before the enqueue; the job function records ``time.time()`` at its
  first line. Reported: p50 / p99 of enqueue-to-start (wall clock, both
  processes on one machine).

* **several processes** (``--processes P``, default 3; 1 leaves it out): the
  throughput run again for trio_monitor with P server processes of C
  workers each on one database, all connected before a common start signal,
  timed from that signal until the N-th outcome is stored
  (``profile_postgres.processes_round``). Reported with its ratio to one
  process, per round.

Each system is driven the way its documentation says: procrastinate with
``App(connector=PsycopgConnector(...))``, ``defer_async`` /
``batch_defer_async`` and ``run_worker_async(concurrency=C)``; saq with
``Queue.from_url("postgres://...")``, ``queue.enqueue`` and
``Worker(queue, functions, concurrency=C)``; trio_monitor with
``JobServer(ServerConfig(worker_count=C))``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import ROOT, Samples, arguments, bar_chart, cdf_chart, machine
from profile_postgres import processes_round

sys.path.insert(0, str(ROOT))  # tests/pg_cluster.py: plain Python, no pytest

SYSTEMS = ("trio_monitor", "procrastinate", "saq")


# -- trio_monitor --------------------------------------------------------------


def trio_monitor_enqueue(url: str, n: int, gap: float) -> None:
    import trio

    from trio_monitor import jobs

    async def main() -> None:
        async with jobs.open_storage(url) as storage:
            if gap:
                for _ in range(n):
                    await trio.sleep(gap)
                    await storage.enqueue(jobs.Job.new("noop", {"t": time.time()}))
            else:
                for start in range(0, n, 1000):
                    batch = [jobs.Job.new("noop", {"t": 0}) for _ in range(min(1000, n - start))]
                    await storage.enqueue_many(batch)

    trio.run(main)


def trio_monitor_work(url: str, n: int, concurrency: int, ready: Any) -> dict[str, Any]:
    import trio

    from trio_monitor import jobs

    starts: list[float] = []
    done = 0
    finished = trio.Event()
    workers = jobs.WorkerRegistry()

    @workers.worker("noop")
    async def noop(job: jobs.Job, ctx: Any) -> None:
        starts.append(time.time() - job.payload["t"])

    def stored(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        # Called once the outcome is stored: the end of the timed span.
        nonlocal done
        if isinstance(new, jobs.Succeeded):
            done += 1
            if done == n:
                finished.set()

    result: dict[str, Any] = {}

    async def main() -> None:
        async with jobs.open_storage(url) as storage:
            config = jobs.ServerConfig(
                server_name="bench",
                worker_count=concurrency,
                fetch_batch_size=concurrency,
                polling_interval=1.0,
            )
            server = jobs.JobServer(config, storage, workers, on_state_change=stored)
            async with trio.open_nursery() as nursery:
                t0 = time.perf_counter()
                await nursery.start(server.run)
                ready()
                await finished.wait()
                result["elapsed"] = time.perf_counter() - t0
                await server.stop()

    trio.run(main)
    result["latencies"] = starts
    return result


# -- procrastinate ---------------------------------------------------------------


def _procrastinate_app(url: str) -> Any:
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))


def procrastinate_enqueue(url: str, n: int, gap: float) -> None:
    app = _procrastinate_app(url)

    @app.task(name="noop")
    async def noop(t: float) -> None:
        pass

    async def main() -> None:
        async with app.open_async():
            if gap:
                for _ in range(n):
                    await asyncio.sleep(gap)
                    await noop.defer_async(t=time.time())
            else:
                for start in range(0, n, 1000):
                    await noop.batch_defer_async(*[{"t": 0} for _ in range(min(1000, n - start))])

    asyncio.run(main())


def procrastinate_work(url: str, n: int, concurrency: int, ready: Any) -> dict[str, Any]:
    app = _procrastinate_app(url)
    starts: list[float] = []
    done = 0
    finished = asyncio.Event()

    @app.task(name="noop")
    async def noop(t: float) -> None:
        nonlocal done
        starts.append(time.time() - t)
        done += 1
        if done == n:
            finished.set()

    result: dict[str, Any] = {}

    async def main() -> None:
        async with app.open_async():
            t0 = time.perf_counter()
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
            )
            if ready is not _noop:
                await asyncio.sleep(0.5)  # started and idle
            ready()
            await finished.wait()
            result["elapsed"] = time.perf_counter() - t0
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    asyncio.run(main())
    result["latencies"] = starts
    return result


def procrastinate_setup(url: str) -> None:
    app = _procrastinate_app(url)

    async def main() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(main())


# -- saq ----------------------------------------------------------------------------


def _saq_url(url: str) -> str:
    return url.replace("postgresql://", "postgres://", 1)


def saq_enqueue(url: str, n: int, gap: float) -> None:
    from saq import Queue

    async def main() -> None:
        queue = Queue.from_url(_saq_url(url))
        await queue.connect()
        try:
            if gap:
                for _ in range(n):
                    await asyncio.sleep(gap)
                    await queue.enqueue("noop", t=time.time())
            else:
                await asyncio.gather(
                    *(
                        asyncio.gather(*(queue.enqueue("noop", t=0) for _ in range(100)))
                        for _ in range(n // 100)
                    )
                )
                for _ in range(n % 100):
                    await queue.enqueue("noop", t=0)
        finally:
            await queue.disconnect()

    asyncio.run(main())


def saq_work(url: str, n: int, concurrency: int, ready: Any) -> dict[str, Any]:
    from saq import Queue, Worker

    starts: list[float] = []
    done = 0
    finished = asyncio.Event()

    async def noop(ctx: Any, *, t: float) -> None:
        nonlocal done
        starts.append(time.time() - t)
        done += 1
        if done == n:
            finished.set()

    result: dict[str, Any] = {}

    async def main() -> None:
        queue = Queue.from_url(_saq_url(url))
        await queue.connect()  # connection setup outside the timed span, as for the others
        t0 = time.perf_counter()
        worker = Worker(queue, functions=[("noop", noop)], concurrency=concurrency)
        task = asyncio.create_task(worker.start())
        if ready is not _noop:
            await asyncio.sleep(0.5)  # started and idle
        ready()
        await finished.wait()
        result["elapsed"] = time.perf_counter() - t0
        # An idle saq worker can hang in stop(); the measurement is done.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.stop(), 5.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    result["latencies"] = starts
    return result


def saq_setup(url: str) -> None:
    from saq import Queue

    async def main() -> None:
        queue = Queue.from_url(_saq_url(url))
        await queue.connect()  # creates the schema
        await queue.disconnect()

    asyncio.run(main())


def trio_monitor_setup(url: str) -> None:
    trio_monitor_enqueue(url, 0, 0.0)  # opening migrates the schema


# -- driver ---------------------------------------------------------------------------


def _noop() -> None:
    pass


def _ready_line() -> None:
    print("READY", flush=True)


def child(args: argparse.Namespace) -> None:
    module = sys.modules[__name__]
    if args.role == "setup":
        getattr(module, f"{args.system}_setup")(args.url)
    elif args.role == "enqueue":
        getattr(module, f"{args.system}_enqueue")(args.url, args.jobs, args.gap)
    else:
        ready = _ready_line if args.role == "latency-worker" else _noop
        result = getattr(module, f"{args.system}_work")(
            args.url, args.jobs, args.concurrency, ready
        )
        print("RESULT " + json.dumps(result), flush=True)


# Children's logs (peers log a lot) go to one file, shown when a child fails.
LOG = Path(tempfile.gettempdir()) / "bench_postgres.log"


def _spawn(*args: str) -> subprocess.Popen[str]:
    with LOG.open("a") as log:
        return subprocess.Popen(
            [sys.executable, __file__, *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=ROOT,
        )


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed with exit code {proc.returncode}; see {LOG}")
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError("child printed no result")


def _run(*args: str) -> None:
    with LOG.open("a") as log:
        subprocess.run([sys.executable, __file__, *args], check=True, cwd=ROOT, stderr=log)


def throughput(system: str, url: str, n: int, concurrency: int) -> float:
    common = ["--system", system, "--url", url]
    _run("--role", "setup", *common)
    _run("--role", "enqueue", *common, "--jobs", str(n), "--gap", "0")
    proc = _spawn("--role", "worker", *common, "--jobs", str(n), "--concurrency", str(concurrency))
    return n / float(_result(proc, timeout=600)["elapsed"])


def latency(system: str, url: str, n: int, concurrency: int, gap: float) -> list[float]:
    common = ["--system", system, "--url", url]
    _run("--role", "setup", *common)
    proc = _spawn(
        "--role", "latency-worker", *common, "--jobs", str(n), "--concurrency", str(concurrency)
    )  # fmt: skip
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != "READY":
        if proc.poll() is not None:
            raise RuntimeError(f"{system} latency worker died")
    time.sleep(0.5)  # let it go idle
    _run("--role", "enqueue", *common, "--jobs", str(n), "--gap", str(gap))
    return [float(x) for x in _result(proc, timeout=600)["latencies"]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = arguments(__doc__.split("\n")[0], rounds=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="also run trio_monitor's throughput with this many server processes (1: no)",
    )
    parser.add_argument(
        "--fsync-off",
        action="store_true",
        help="run the cluster with fsync, synchronous_commit and full_page_writes off "
        "(default: PostgreSQL's own durable defaults)",
    )
    parser.add_argument(
        "--claim-commit",
        choices=["on", "off"],
        help="open trio_monitor's storage with claim_synchronous_commit=on|off "
        "(default: not set, the cluster's synchronous_commit)",
    )
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role != "main":
        child(args)
        return
    if args.quick:
        args.rounds, args.jobs, args.latency_jobs = 1, 1000, 30

    from tests.pg_cluster import PgCluster

    systems = [s for s in args.systems.split(",") if s]
    rates: dict[str, list[float]] = {s: [] for s in systems}
    lats: dict[str, list[float]] = {s: [] for s in systems}
    failed: dict[str, str] = {}
    several = f"trio_monitor x{args.processes} processes"
    several_rates: list[float] = []
    option = f"?claim_synchronous_commit={args.claim_commit}" if args.claim_commit else ""

    def database(system: str, name: str) -> str:
        url = cluster.create_database(name)
        return url + option if system == "trio_monitor" else url

    with PgCluster.start(durable=not args.fsync_off) as cluster:
        # One untimed warm-up per system (a short throughput run): the
        # cluster's caches, the children's imports, the first connections.
        for system in systems:
            try:
                url = database(system, f"bench_{system}_warm_up")
                throughput(system, url, min(args.jobs, 500), args.concurrency)
            except Exception as exc:
                failed[system] = f"{type(exc).__name__}: {exc}"
        for round_ in range(args.rounds):
            shift = round_ % len(systems)
            for system in systems[shift:] + systems[:shift]:
                if system in failed:
                    continue
                try:
                    url = database(system, f"bench_{system}_{round_}_t")
                    rates[system].append(throughput(system, url, args.jobs, args.concurrency))
                    url = database(system, f"bench_{system}_{round_}_l")
                    lats[system].extend(
                        latency(system, url, args.latency_jobs, args.concurrency, args.gap)
                    )
                except Exception as exc:
                    failed[system] = f"{type(exc).__name__}: {exc}"
                print(f"round {round_ + 1}: {system} done", file=sys.stderr, flush=True)
            if "trio_monitor" in systems and args.processes > 1 and several not in failed:
                try:
                    url = database("trio_monitor", f"bench_several_{round_}")
                    got = processes_round(url, args.jobs, args.processes, args.concurrency)
                    several_rates.append(got["rate"])
                except Exception as exc:
                    failed[several] = f"{type(exc).__name__}: {exc}"

    durability = "fsync off" if args.fsync_off else "default durability (fsync on)"
    if args.claim_commit:
        durability += f"; trio_monitor with claim_synchronous_commit={args.claim_commit}"
    print(f"\n{machine()}; PostgreSQL cluster at {durability}")
    print(
        f"N={args.jobs} no-op jobs, concurrency={args.concurrency}, rounds={args.rounds}, "
        f"latency: {args.latency_jobs} jobs, gap {args.gap * 1000:.0f} ms"
    )
    print(f"{'system':<14} {'jobs/s (median)':>16} {'runs':>28} {'p50 ms':>8} {'p99 ms':>8}")
    for system in systems:
        if system in failed:
            print(f"{system:<14} failed: {failed[system]}")
            continue
        runs = " ".join(f"{r:.0f}" for r in rates[system])
        p50 = percentile(lats[system], 0.5) * 1000
        p99 = percentile(lats[system], 0.99) * 1000
        print(
            f"{system:<14} {statistics.median(rates[system]):>16.0f} {runs:>28} "
            f"{p50:>8.2f} {p99:>8.2f}"
        )
    ours = rates.get("trio_monitor")
    peers = [statistics.median(rates[s]) for s in systems if s != "trio_monitor" and rates[s]]
    if several in failed:
        print(f"{several}: failed: {failed[several]}")
    elif ours and several_rates:
        runs = " ".join(f"{r:.0f}" for r in several_rates)
        ratios = [m / o for m, o in zip(several_rates, ours, strict=False)]
        print(
            f"{several}: {statistics.median(several_rates):.0f} jobs/s median ({runs}); "
            f"{statistics.median(ratios):.2f}x one process "
            f"({min(ratios):.2f}-{max(ratios):.2f} per round)"
        )
    if ours and peers:
        print(f"\ntrio_monitor / best peer throughput: {statistics.median(ours) / max(peers):.2f}x")
    if args.plot:
        suffix = "_fsync_off" if args.fsync_off else ""
        done = [s for s in systems if s not in failed]
        cdf_chart(
            f"postgres_latency{suffix}",
            f"enqueue to start, idle workers, PostgreSQL at {durability}",
            {s: [x * 1000 for x in lats[s] if x > 0] for s in done},
            xlabel="milliseconds (log scale)",
        )
        bar_chart(
            f"postgres_throughput{suffix}",
            f"{args.jobs:,} no-op jobs, {args.concurrency} workers, PostgreSQL at {durability}",
            Samples({s: rates[s] for s in done}),
            label="jobs per second (median, range)",
        )


if __name__ == "__main__":
    main()
