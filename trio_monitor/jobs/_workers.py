"""Worker functions, their registry, and the context each run gets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import attrs

from .._token import ShutdownToken
from .._validate import check_str
from ._model import Job

__all__ = ["CallNext", "Middleware", "WorkerContext", "WorkerFn", "WorkerRegistry"]


@attrs.frozen
class WorkerContext:
    """What a worker function knows about the run it is in.

    Attributes:
      cancel (trio_monitor.ShutdownToken): Set when the server stops. A
        long job should watch it and wind down: the server cancels it
        outright once ``shutdown_timeout`` has passed.
      worker_id (str): The worker running the job.
      server_name (str): The server's identity, as stamped in
        :attr:`Processing.server_name <trio_monitor.jobs.Processing>`.
      attempt (int): Which attempt this is, 1-based.
    """

    cancel: ShutdownToken
    worker_id: str
    server_name: str
    attempt: int


#: A worker function: ``async def fn(job, ctx) -> result``.
WorkerFn = Callable[[Job, WorkerContext], Awaitable[object]]
#: What a middleware calls to run the rest of the chain; returns the result.
CallNext = Callable[[], Awaitable[object]]
#: A middleware: ``async def mw(job, ctx, call_next) -> result``.
Middleware = Callable[[Job, WorkerContext, CallNext], Awaitable[object]]


class WorkerRegistry:
    """Maps job method names to the worker functions that run them.

    ::

        workers = jobs.WorkerRegistry()

        @workers.worker("send_email")
        async def send_email(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
            ...
    """

    __slots__ = ("_workers",)

    def __init__(self) -> None:
        self._workers: dict[str, WorkerFn] = {}

    def worker(self, name: str) -> Callable[[WorkerFn], WorkerFn]:
        """Decorator: register the decorated async function for method ``name``.

        The function is returned unchanged.
        """

        def register(fn: WorkerFn) -> WorkerFn:
            self.register(name, fn)
            return fn

        return register

    def register(self, name: str, fn: WorkerFn) -> None:
        """Register ``fn`` for method ``name``.

        Raises:
          ValueError: ``name`` is empty or already registered.
          TypeError: ``name`` is not a str, or ``fn`` is not callable.
        """
        check_str("worker name", name)
        if not callable(fn):
            raise TypeError(f"worker for {name!r} must be an async function, got {fn!r}")
        if name in self._workers:
            raise ValueError(f"a worker for method {name!r} is already registered")
        self._workers[name] = fn

    def get(self, name: str) -> WorkerFn | None:
        """The worker for method ``name``, or None."""
        return self._workers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._workers

    def __iter__(self) -> Iterator[str]:
        return iter(self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def __repr__(self) -> str:
        return f"<WorkerRegistry {sorted(self._workers)}>"
