"""Run ``python -m trio_monitor`` as a real subprocess, as an operator would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from trio_monitor import jobs
from trio_monitor.cli._output import job_json

ROOT = Path(__file__).resolve().parents[2]
#: Bound on one command; a worker's run is bounded by the tests' own waits.
COMMAND_TIMEOUT = 60.0


def command_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: this tree importable, no inherited storage."""
    env = {k: v for k, v in os.environ.items() if k != "TRIO_MONITOR_STORAGE"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command with ``args``; return the finished process (never raises on status)."""
    return subprocess.run(
        [sys.executable, "-m", "trio_monitor", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else command_env(),
        cwd=cwd or ROOT,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


class Worker:
    """A ``worker`` subprocess whose stderr goes to a file the test can read."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trio_monitor", "worker", *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env=env,
            cwd=ROOT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fail if the worker exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker log never matched {pattern!r}:\n{self.output()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        status = self.process.wait(timeout)
        self._log_file.close()
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log_file.close()


class Cli:
    """The command on one storage URL, with the workers it started."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.workers: list[Worker] = []

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a command, the storage given after the command name."""
        return run(*args, "--storage", self.url)

    def ok(self, *args: str) -> str:
        """Run a command that must succeed; return its stdout."""
        done = self(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.json("job", job_id)
        return found

    def wait_for_state(self, job_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the database (in this process: quicker than a command each time)."""

        async def poll() -> dict[str, Any]:
            async with jobs.open_storage(self.url) as storage:
                with trio.fail_after(timeout):
                    while True:
                        job = await storage.get(job_id)
                        assert job is not None, job_id
                        if job.state.name == state:
                            return job_json(job)
                        await trio.sleep(0.05)

        return trio.run(poll)

    def start_worker(self, *args: str, app: str = "tests.cli.app:workers", **env: str) -> Worker:
        """Start ``worker APP ARGS`` with the storage in the environment."""
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = Worker(
            [app, "--polling-interval", "0.2", *args],
            command_env(TRIO_MONITOR_STORAGE=self.url, **env),
            log,
        )
        self.workers.append(worker)
        worker.wait_for_log(r"worker \S+ started")
        return worker

    def stop_worker(self, worker: Worker) -> None:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()

    def kill_workers(self) -> None:
        for worker in self.workers:
            worker.kill()
