"""`jobs.Client`: enqueue, wait for, abort and inspect jobs, and control queues.

A client is a thin, checked front on a :class:`~trio_monitor.jobs.Storage`:
it needs no running server (a web process opens the storage and makes a
client), and ``server.client`` is one on the server's storage. Every argument
is checked before anything is sent to storage, so bad input raises
:class:`TypeError` or :class:`ValueError` and nothing stored changes. Every
guarantee (unique keys, limits, locks) is the storage's: the database
enforces them, so they hold however many clients and servers share it.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final, cast

import trio

from .._validate import MAX_SECONDS, check_count, check_seconds, check_str, shown
from ._model import (
    Aborted,
    AwaitingRetry,
    Deleted,
    Enqueued,
    Failed,
    Job,
    JobState,
    Processing,
    QueueInfo,
    RecurringJob,
    Scheduled,
    ServerInfo,
    Succeeded,
    utcnow,
)
from ._storage import WATCH_SECONDS, Storage

__all__ = ["Client"]

_STATES: Final[dict[str, type[JobState]]] = {
    cls.name: cls
    for cls in (
        Enqueued,
        Scheduled,
        Processing,
        Succeeded,
        Failed,
        AwaitingRetry,
        Deleted,
        Aborted,
    )
}
_TERMINAL: Final = (Succeeded, Failed, Aborted, Deleted)

logger = logging.getLogger("trio_monitor.jobs")

# client.wait polls between push wake-ups: first soon, then up to this often.
_FIRST_POLL: Final = 0.01
_MAX_POLL: Final = 1.0
# Seconds wait's cleanup may take to unregister (shielded); an unregistered
# waiter's row expires anyway.
_UNWATCH_TIMEOUT: Final = 5.0


def _state_filter(state: object) -> type[JobState] | None:
    """A ``list_jobs`` state filter: None, a state class, or a state name."""
    if state is None:
        return None
    if isinstance(state, str):
        try:
            return _STATES[state]
        except KeyError:
            raise ValueError(
                f"unknown job state {shown(state)}: use one of {', '.join(sorted(_STATES))}"
            ) from None
    if isinstance(state, type) and state in _STATES.values():
        return state
    raise TypeError(
        f"state must be a job state class (e.g. jobs.Failed) or name, not {shown(state)}"
    )


def check_rate(rate: object) -> tuple[int, float] | None:
    """A queue's ``rate``: None, or ``(n, seconds)`` with ``n >= 1`` and ``seconds > 0``."""
    if rate is None:
        return None
    if not isinstance(rate, tuple):
        raise TypeError(f"rate must be a tuple (n, seconds) or None, not {shown(rate)}")
    pair = cast(tuple[object, ...], rate)
    if len(pair) != 2:
        raise TypeError(f"rate must be a tuple (n, seconds) or None, not {shown(pair)}")
    count, seconds = pair
    return (
        check_count("rate[0] (jobs per window)", count, minimum=1),
        check_seconds("rate[1] (window)", seconds, positive=True, maximum=MAX_SECONDS),
    )


class Client:
    """Producer and operator calls on a job storage (SPEC §6).

    Args:
      storage: An open :class:`~trio_monitor.jobs.Storage` (from
        :func:`~trio_monitor.jobs.open_storage`); the client does not own or
        close it.
      clock: Wall-clock UTC source for the times the client stamps (tests
        may inject one). Default: the real clock.
    """

    def __init__(self, storage: Storage, *, clock: Callable[[], datetime] = utcnow) -> None:
        if not isinstance(storage, Storage):
            raise TypeError(f"storage must be a jobs.Storage, not {shown(storage)}")
        self._storage = storage
        self._clock = clock

    @property
    def storage(self) -> Storage:
        """The storage this client talks to."""
        return self._storage

    def __repr__(self) -> str:
        return f"<jobs.Client on {self._storage!r}>"

    # -- producers -------------------------------------------------------

    async def enqueue(
        self,
        method: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
        lock: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  (the job's timeout, SPEC §6)
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Store a new job and return its id (see :meth:`Job.new` for the arguments).

        With ``unique_key``: if a live job (Enqueued, Scheduled,
        AwaitingRetry or Processing) has that key, nothing is stored and its
        id is returned. ``delay`` (seconds) or ``run_at`` make the job
        Scheduled until then. TypeError for a payload that is not
        JSON-serialisable; nothing is stored then.
        """
        job = Job.new(
            method,
            payload,
            queue,
            priority,
            headers=headers,
            timeout=timeout,
            unique_key=unique_key,
            lock=lock,
            delay=delay,
            run_at=run_at,
            now=self._clock(),
        )
        return await self._storage.enqueue(job)

    async def enqueue_many(self, jobs: Iterable[Job]) -> list[str]:
        """Store several jobs (made with :meth:`Job.new`) in one transaction: all or nothing.

        Slot ``i`` of the result is the id of ``jobs[i]``, or of the live job
        that already held its ``unique_key``.
        """
        batch = list(jobs)
        for index, job in enumerate(batch):
            if not isinstance(job, Job):
                raise TypeError(f"jobs[{index}] must be a jobs.Job, not {shown(job)}")
        return await self._storage.enqueue_many(batch)

    async def get(self, job_id: str) -> Job | None:
        """The job with this id as stored now, or None."""
        return await self._storage.get(check_str("job_id", job_id))

    async def wait(self, job_id: str) -> Job:
        """Wait until the job is Succeeded, Failed, Aborted or Deleted, and return it.

        Woken at once by a finish in this process or (PostgreSQL) in any
        process: it registers itself with the storage
        (:meth:`Storage.watch_finish`) before it first reads the job, so
        PostgreSQL announces the finishes of awaited jobs only, and removes
        the registration however it ends. Otherwise it polls, every 10 ms
        at first and then at most every second. There is no timeout: bound
        it with ``trio.fail_after``. KeyError if no job has this id (or it was
        cleaned up while waiting).
        """
        check_str("job_id", job_id)
        # Registered before the first read (so a finish in between is
        # announced), renewed while waiting, removed however wait ends.
        token = uuid.uuid4().hex
        try:
            return await self._wait_watched(job_id, token)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_UNWATCH_TIMEOUT):
                try:
                    await self._storage.unwatch_finish(token)
                except Exception:  # e.g. storage closed; the row expires
                    logger.debug("could not unregister waiter %s", token, exc_info=True)

    async def _wait_watched(self, job_id: str, token: str) -> Job:
        poll = _FIRST_POLL
        renew_at = -math.inf
        while True:
            if trio.current_time() >= renew_at:
                await self._storage.watch_finish(job_id, token)
                renew_at = trio.current_time() + WATCH_SECONDS / 3
            job: Job | None = None
            read = False
            with trio.move_on_after(poll):
                async with trio.open_nursery() as nursery:
                    # Listen before reading, so a finish in between wakes us.
                    woken = trio.Event()
                    nursery.start_soon(self._wake_on_finish, woken)
                    job = await self._storage.get(job_id)
                    read = True
                    if job is None or isinstance(job.state, _TERMINAL):
                        nursery.cancel_scope.cancel()
                    else:
                        await woken.wait()
            if read and job is None:
                raise KeyError(job_id)
            if job is not None and isinstance(job.state, _TERMINAL):
                return job
            poll = min(poll * 2, _MAX_POLL)

    async def _wake_on_finish(self, woken: trio.Event) -> None:
        await self._storage.wait_for_finish()
        woken.set()

    # -- operators -------------------------------------------------------

    async def abort(self, job_id: str, reason: str = "aborted") -> bool:
        """Abort a job; False if it is already terminal or unknown.

        Enqueued, Scheduled or AwaitingRetry: it is Aborted now and never
        runs. Processing: the server running it is told to cancel it (at
        once in-process and on PostgreSQL, within its polling interval across
        SQLite processes); it ends Aborted and is not retried. True means
        the job will not finish Succeeded or Failed from then on, except a
        Processing job whose code completes before its server hears the
        abort (see the how-to).
        """
        check_str("job_id", job_id)
        check_str("reason", reason, allow_empty=True)
        outcome = await self._storage.abort(job_id, reason, self._clock())
        return outcome in ("aborted", "requested")

    async def retry(self, job_id: str) -> bool:
        """Put a Failed or Aborted job back to Enqueued (attempts from 0); False otherwise.

        False too if its ``unique_key`` is held by another live job.
        """
        return await self._storage.retry(check_str("job_id", job_id), self._clock())

    async def delete(self, job_id: str) -> bool:
        """Mark a job Deleted; False if unknown or already Deleted.

        A Processing job is aborted instead (reason ``"deleted"``): it ends
        Aborted.
        """
        return await self._storage.delete(check_str("job_id", job_id), self._clock())

    async def pause_queue(self, name: str) -> None:
        """Start nothing from queue ``name`` until resumed, on every server (stored)."""
        await self._storage.pause_queue(check_str("name", name))

    async def resume_queue(self, name: str) -> None:
        """Let servers start jobs of queue ``name`` again."""
        await self._storage.resume_queue(check_str("name", name))

    async def set_queue_limits(
        self,
        name: str,
        *,
        max_running: int | None = None,
        rate: tuple[int, float] | None = None,
    ) -> None:
        """Store queue ``name``'s limits, honoured by every server's claims (None: no limit).

        ``max_running``: at most that many of its jobs Processing at once.
        ``rate=(n, seconds)``: at most ``n`` of its jobs start in any
        ``seconds``-long sliding window. Each call replaces both limits.
        """
        check_str("name", name)
        if max_running is not None:
            check_count("max_running", max_running)
        checked_rate = check_rate(rate)
        await self._storage.set_queue_limits(name, max_running, checked_rate)

    # -- listings --------------------------------------------------------

    async def list_jobs(
        self,
        *,
        state: type[JobState] | str | None = None,
        queue: str | None = None,
        method: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered; page with ``before=<last id of the previous page>``.

        ``state`` is a state class (``jobs.Failed``) or name (``"failed"``);
        None lists every state. ValueError for an unknown state name or a
        negative limit.
        """
        state_class = _state_filter(state)
        if queue is not None:
            check_str("queue", queue)
        if method is not None:
            check_str("method", method)
        check_count("limit", limit)
        if before is not None:
            check_str("before", before)
        return await self._storage.list_jobs(
            state=state_class,
            queue=queue,
            method=method,
            limit=limit,
            before=before,
            newest_first=True,
        )

    async def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per ``(queue, state name)``, e.g. ``{("default", "failed"): 3}``."""
        return await self._storage.counts()

    async def queues(self) -> list[QueueInfo]:
        """Every queue that has jobs or settings, by name."""
        return await self._storage.list_queues()

    async def servers(self) -> list[ServerInfo]:
        """The heartbeat rows of the running servers."""
        return await self._storage.list_servers()

    async def recurring(self) -> list[RecurringJob]:
        """The recurring templates."""
        return await self._storage.list_recurring()
