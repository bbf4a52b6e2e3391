"""Worker functions, their registry and per-method settings, and the context each run gets."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from .._token import ShutdownToken
from .._validate import MAX_SECONDS, check_seconds, check_str
from ._model import Job, Progress

if TYPE_CHECKING:
    from ._processor import RetryPolicy

__all__ = [
    "CallNext",
    "Lifespan",
    "Method",
    "Middleware",
    "Retry",
    "WorkerContext",
    "WorkerFn",
    "WorkerRegistry",
]


class Retry(Exception):
    """Raised by a worker to ask for another attempt: ``raise jobs.Retry(delay=30)``.

    The attempt counts (so ``max_attempts`` still ends a job that always
    asks), and it is retried even when the method's ``retry_on`` does not
    name :class:`Retry`. A job that asks on its last attempt ends Failed.

    Args:
      delay: Seconds before the next attempt, instead of the retry
        policy's delay (None: the policy's). Finite, ``>= 0``, at most
        about 95 years.
      reason: Why, for people; stored as the attempt's error text.
    """

    def __init__(self, delay: float | None = None, reason: str | None = None) -> None:
        if delay is not None:
            delay = check_seconds("Retry delay", delay, maximum=MAX_SECONDS)
        if reason is not None:
            check_str("Retry reason", reason, allow_empty=True)
        super().__init__(*(() if reason is None else (reason,)))
        self.delay = delay
        self.reason = reason


@attrs.frozen
class WorkerContext:
    """What a worker function knows about the run it is in.

    Attributes:
      cancel (trio_monitor.ShutdownToken): Set when the server stops. A
        long job should watch it and wind down: the server cancels it
        outright once ``shutdown_timeout`` has passed.
      worker_id (str): The worker id the claim stamped on the job
        (:attr:`Processing.worker_id <trio_monitor.jobs.Processing>`): no
        two jobs a server runs at once share one.
      server_name (str): The server's identity, as stamped in
        :attr:`Processing.server_name <trio_monitor.jobs.Processing>`.
      attempt (int): Which attempt this is, 1-based.
      job_id (str): The job being run.
      headers (dict[str, str]): The job's headers, as given at enqueue.
      state (object): What the registry's ``lifespan`` yielded for this
        server start (None without a lifespan): a database pool, an HTTP
        client, shared by every job.
    """

    cancel: ShutdownToken
    worker_id: str
    server_name: str
    attempt: int
    job_id: str = ""
    headers: dict[str, str] = attrs.field(factory=dict[str, str])
    state: Any = None
    _set_progress: Callable[[str, Progress], Awaitable[bool]] | None = attrs.field(
        default=None, alias="set_progress", repr=False
    )

    async def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Store how far the job is (``job.progress``), visible to clients and the dashboard.

        ``fraction`` is in ``[0, 1]``. The job's version is not bumped, so
        reporting never disturbs its outcome. ValueError/TypeError for a
        bad fraction or message (nothing is stored).
        """
        progress = Progress(fraction, message)
        if self._set_progress is None:
            await trio.lowlevel.checkpoint()
            return
        await self._set_progress(self.job_id, progress)


#: A worker function: ``async def fn(job, ctx) -> result``, or a plain
#: ``def fn(job, ctx) -> result`` run in a worker thread.
WorkerFn = Callable[[Job, WorkerContext], Any]
#: A registry's lifespan: ``fn()`` returns an async context manager, entered
#: once per server start; what it yields is ``ctx.state``.
Lifespan = Callable[[], AbstractAsyncContextManager[Any]]


def _is_async(fn: object) -> bool:
    """Whether ``fn`` is an ``async def`` (or an object whose ``__call__`` is one)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


@attrs.frozen
class Method:
    """A registered method: its worker function and its own settings.

    Attributes:
      fn: The worker function.
      is_async: False for a plain ``def`` (run in a worker thread).
      timeout: Seconds one attempt may run (None: the job's own or the
        server's ``job_timeout``). A job's own ``timeout`` beats it.
      retry_policy: The method's retries (None: the server's).
      retry_on: Only these exception types are retried (None: all); the
        rest fail the job at once. :class:`Retry` is always retried.
    """

    fn: WorkerFn
    is_async: bool
    timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    retry_on: tuple[type[BaseException], ...] | None = None

    def retries(self, exc: BaseException) -> bool:
        """Whether a failure by ``exc`` may be retried under ``retry_on``."""
        return self.retry_on is None or isinstance(exc, (Retry, *self.retry_on))


def _retry_on(name: str, value: object) -> tuple[type[BaseException], ...] | None:
    if value is None:
        return None
    items: tuple[object, ...]
    if isinstance(value, type):
        items = (value,)
    elif isinstance(value, tuple | list):
        items = tuple(cast("tuple[object, ...] | list[object]", value))
    else:
        raise TypeError(f"retry_on for {name!r} must be a tuple of exception types, not {value!r}")
    for item in items:
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise TypeError(f"retry_on for {name!r} must hold Exception subclasses, got {item!r}")
    return cast("tuple[type[BaseException], ...]", items)


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

    __slots__ = ("_workers", "lifespan")

    def __init__(self, *, lifespan: Lifespan | None = None) -> None:
        if lifespan is not None and not callable(lifespan):
            raise TypeError(
                f"lifespan must be a callable returning an async context manager, not {lifespan!r}"
            )
        self._workers: dict[str, Method] = {}
        #: ``fn()`` -> an async context manager entered once per server start
        #: (open a pool there); what it yields is ``ctx.state``. None: no state.
        self.lifespan = lifespan

    def worker(
        self,
        name: str,
        *,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> Callable[[WorkerFn], WorkerFn]:
        """Decorator: register the decorated function for method ``name``.

        An ``async def`` runs in the server's Trio task; a plain ``def`` runs
        in a worker thread (see :meth:`register`). The function is returned
        unchanged; the arguments are checked at once.
        """
        method = self._method(name, None, timeout, retry_policy, retry_on)

        def register(fn: WorkerFn) -> WorkerFn:
            self._add(name, attrs.evolve(method, fn=fn, is_async=self._check_fn(name, fn)))
            return fn

        return register

    def register(
        self,
        name: str,
        fn: WorkerFn,
        *,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
    ) -> None:
        """Register ``fn`` for method ``name``, with the method's own settings.

        ``fn(job, ctx)``: an ``async def``, or a plain ``def`` that the
        server runs in a worker thread (at most ``worker_count`` at once);
        it should call :func:`trio.from_thread.check_cancelled` now and then,
        which raises once the job is aborted, timed out or stopped. A thread
        that never does is abandoned at that moment (the job's outcome is
        decided then; the thread runs on, holding its place among the
        threads, until it returns).

        ``timeout`` (seconds) beats the server's ``job_timeout`` for this
        method, and a job's own ``timeout`` beats it. ``retry_policy``
        replaces the server's. ``retry_on``: only these exception types are
        retried, the rest fail the job at once (:class:`Retry` always
        retries).

        Raises:
          ValueError: ``name`` is empty or already registered; a negative,
            zero, infinite or too long timeout.
          TypeError: ``name`` is not a str, ``fn`` is not callable,
            ``retry_policy`` is not a RetryPolicy, or ``retry_on`` is not
            a tuple of exception types.
        """
        self._add(name, self._method(name, fn, timeout, retry_policy, retry_on))

    def _method(
        self,
        name: str,
        fn: WorkerFn | None,
        timeout: float | None,
        retry_policy: object,
        retry_on: object,
    ) -> Method:
        from ._processor import RetryPolicy

        check_str("worker name", name)
        if timeout is not None:
            timeout = check_seconds(
                f"timeout of {name!r}", timeout, positive=True, maximum=MAX_SECONDS
            )
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(
                f"retry_policy of {name!r} must be a jobs.RetryPolicy, not {retry_policy!r}"
            )
        is_async = True if fn is None else self._check_fn(name, fn)
        return Method(
            fn=cast(WorkerFn, fn),
            is_async=is_async,
            timeout=timeout,
            retry_policy=retry_policy,
            retry_on=_retry_on(name, retry_on),
        )

    @staticmethod
    def _check_fn(name: str, fn: object) -> bool:
        if not callable(fn):
            raise TypeError(f"worker for {name!r} must be a function, got {fn!r}")
        return _is_async(fn)

    def _add(self, name: str, method: Method) -> None:
        if name in self._workers:
            raise ValueError(f"a worker for method {name!r} is already registered")
        self._workers[name] = method

    def get(self, name: str) -> WorkerFn | None:
        """The worker for method ``name``, or None."""
        method = self._workers.get(name)
        return None if method is None else method.fn

    def method(self, name: str) -> Method | None:
        """The worker for method ``name`` with its settings, or None."""
        return self._workers.get(name)

    def open_state(self) -> AbstractAsyncContextManager[Any]:
        """Enter the lifespan (once per server start); yields ``ctx.state`` (None without one)."""
        return _state(self.lifespan)

    def __contains__(self, name: object) -> bool:
        return name in self._workers

    def __iter__(self) -> Iterator[str]:
        return iter(self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def __repr__(self) -> str:
        return f"<WorkerRegistry {sorted(self._workers)}>"


@asynccontextmanager
async def _state(lifespan: Lifespan | None) -> AsyncGenerator[Any, None]:
    if lifespan is None:
        await trio.lowlevel.checkpoint()
        yield None
        return
    manager = lifespan()
    if not isinstance(manager, AbstractAsyncContextManager):
        raise TypeError(
            f"lifespan() must return an async context manager (an @asynccontextmanager "
            f"function), not {manager!r}"
        )
    async with manager as state:
        yield state
