"""A dashboard served over real HTTP by Hypercorn's Trio worker, in a thread, for browser tests.

The thread runs its own ``trio.run``: a SQLite storage, a job server with
heartbeats (so jobs retried in the browser really run), and the dashboard.
The browser (sync Playwright) runs in the test's thread.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from trio_monitor import jobs
from trio_monitor.jobs.dashboard import create_app

Seeder = Callable[[jobs.Storage], Awaitable[dict[str, str]]]


def workers() -> jobs.WorkerRegistry:
    """Workers for the seeded methods: all succeed, except ``slow`` which never ends."""
    registry = jobs.WorkerRegistry()

    async def succeed(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return {"done": job.method}

    for method in ("send_email", "render_report", "charge_card"):
        registry.worker(method)(succeed)

    @registry.worker("slow")
    async def slow(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.sleep_forever()

    return registry


class LiveDashboard:
    """Serve the dashboard on 127.0.0.1 (any free port) until :meth:`stop`."""

    def __init__(self, tmp_path: Path, seeder: Seeder, **options: Any) -> None:
        self.storage_url = f"sqlite:///{tmp_path / 'live.db'}"
        self._seeder = seeder
        self._options = options
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="live-dashboard")
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self.url = ""
        self.ids: dict[str, str] = {}

    def start(self) -> LiveDashboard:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the live dashboard did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None:
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(30)

    def run(self, fn: Callable[[jobs.Storage], Awaitable[Any]]) -> Any:
        """Run ``await fn(storage)`` in the server's Trio run; return its result."""
        return trio.from_thread.run(fn, self._storage, trio_token=self._token)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        server_config = jobs.ServerConfig(
            server_name="live",
            queues=(),  # every queue
            worker_count=4,
            polling_interval=0.1,
            enable_heartbeat=True,
            heartbeat_interval=1.0,
        )
        async with jobs.open_storage(self.storage_url) as storage:
            self._storage = storage
            self.ids = await self._seeder(storage)
            app = create_app(storage, **self._options)
            server = jobs.JobServer(server_config, storage, workers())
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                self._token = trio.lowlevel.current_trio_token()
                await nursery.start(server.run)
                urls: list[str] = await nursery.start(partial(serve, app, config))
                self.url = urls[0]
                self._ready.set()
