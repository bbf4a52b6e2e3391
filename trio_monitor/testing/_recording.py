"""A storage that remembers what was enqueued, and :func:`assert_enqueued`.

Asserting on what a piece of code enqueued should not need an ``await``,
nor a look at every backend's tables: the storage handed to the server and
the client by :func:`~trio_monitor.testing.open_test_server` is a
:class:`RecordingStorage`, which keeps a copy of every job stored through
it (by a client, the server, or the recurring poller), in order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from ..jobs import Job, Storage
from ..jobs._storage import NextRun

__all__ = ["RecordingStorage", "assert_enqueued"]


class RecordingStorage:
    """A :class:`~trio_monitor.jobs.Storage` that records every job enqueued through it.

    Every storage call is passed to ``storage``; :meth:`enqueue`,
    :meth:`enqueue_many` and :meth:`enqueue_due_recurring` also append a
    copy of each stored job (as it was stored) to :attr:`enqueued`, then
    call ``on_enqueue(jobs)``.

    Args:
      storage: The storage to wrap (it stays open and owned by the caller).
      on_enqueue: Called with the jobs just stored, in the caller's task.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, storage: Storage, on_enqueue: Callable[[list[Job]], None] | None = None
    ) -> None:
        if not isinstance(storage, Storage):
            raise TypeError(
                f"storage must implement the Storage protocol, not {type(storage).__name__}"
            )
        self.wrapped = storage
        #: Every job enqueued through this storage, oldest first.
        self.enqueued: list[Job] = []
        self._on_enqueue = on_enqueue

    def __repr__(self) -> str:
        return f"<RecordingStorage of {self.wrapped!r}: {len(self.enqueued)} enqueued>"

    def __getattr__(self, name: str) -> Any:
        # Everything else is the wrapped storage's (including calls added later).
        return getattr(self.wrapped, name)

    def as_storage(self) -> Storage:
        """This object, typed as the :class:`~trio_monitor.jobs.Storage` it stands in for."""
        return cast(Storage, self)

    def _record(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        made = [copy.deepcopy(job) for job in jobs]
        self.enqueued.extend(made)
        if self._on_enqueue is not None:
            self._on_enqueue(made)

    async def enqueue(self, job: Job) -> str:
        """:meth:`Storage.enqueue <trio_monitor.jobs.Storage.enqueue>`, recorded."""
        job_id = await self.wrapped.enqueue(job)
        self._record([job])
        return job_id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """:meth:`Storage.enqueue_many <trio_monitor.jobs.Storage.enqueue_many>`, recorded."""
        jobs = list(jobs)
        ids = await self.wrapped.enqueue_many(jobs)
        self._record(jobs)
        return ids

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        """:meth:`Storage.enqueue_due_recurring
        <trio_monitor.jobs.Storage.enqueue_due_recurring>`, recorded."""
        made = await self.wrapped.enqueue_due_recurring(now, next_run)
        self._record(made)
        return made


def _recording_of(target: object) -> RecordingStorage:
    if isinstance(target, RecordingStorage):
        return target
    storage = getattr(target, "storage", None)
    if isinstance(storage, RecordingStorage):
        return storage
    raise TypeError(
        "assert_enqueued() needs the client, server or storage of open_test_server() "
        f"(or a RecordingStorage), not {type(target).__name__}: a plain storage does "
        "not remember what was enqueued through it"
    )


def _describe(job: Job) -> str:
    return (
        f"{job.method}({job.payload!r}) queue={job.queue!r} priority={job.priority} "
        f"{job.state.name} id={job.id}"
    )


def assert_enqueued(
    client_or_storage: object,
    method: str | None = None,
    payload: Any = None,
    queue: str | None = None,
    count: int | None = None,
) -> list[Job]:
    """Assert that matching jobs were enqueued; return them, oldest first.

    Looks at every job enqueued through the storage of
    :func:`open_test_server` since it opened (by the client, the server or
    the recurring poller), whatever became of the job since. A job matches
    if it has the given ``method``, ``queue`` and ``payload`` (compared with
    ``==``); one left ``None`` matches anything (so a ``null`` payload cannot
    be asked for: look at the returned jobs instead). With ``count=None`` at least one
    job must match, otherwise exactly ``count`` (``count=0``: none was).

    Args:
      client_or_storage: The test server, its ``client``, its ``server`` or
        its ``storage`` (any object whose ``storage`` is a
        :class:`RecordingStorage`).

    Raises:
      AssertionError: the matching jobs are not as asked; the message
        lists every job that *was* enqueued.
      TypeError: ``client_or_storage`` does not record enqueues.
      ValueError: a negative ``count``.
    """
    recording = _recording_of(client_or_storage)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"count must be an int >= 0 or None, got {count!r}")
    matching = [
        job
        for job in recording.enqueued
        if (method is None or job.method == method)
        and (queue is None or job.queue == queue)
        and (payload is None or job.payload == payload)
    ]
    if (count is None and matching) or len(matching) == count:
        return matching
    wanted = ", ".join(
        f"{name}={value!r}"
        for name, value in (("method", method), ("payload", payload), ("queue", queue))
        if value is not None
    )
    expected = "at least one job" if count is None else f"exactly {count} job(s)"
    lines = [
        f"expected {expected} enqueued matching {wanted or 'anything'}; found {len(matching)}.",
        f"Enqueued ({len(recording.enqueued)}):" if recording.enqueued else "Nothing was enqueued.",
    ]
    lines.extend(f"  {_describe(job)}" for job in recording.enqueued)
    raise AssertionError("\n".join(lines))
