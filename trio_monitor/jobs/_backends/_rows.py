"""The storage rules every backend shares, written once.

How a job, a server row and a recurring template map to columns and back;
how a state is encoded; which columns a state fills for the indexes; what a
claim, a transition and a requeue change; how a recurring occurrence is made
and what happens when a template's cron can't be evaluated. The SQL backends
build their statements from these records, and the memory backend applies
the same functions to its dicts, so one rule can't drift between backends.

Timestamps: each backend stores them its own way (SQLite as integer
microseconds, PostgreSQL as ``timestamptz``, memory as datetimes), so the
functions that write rows take a ``stamp`` converter (``datetime -> stored``)
and those that read take a ``when`` converter (``stored -> datetime``).

Adding a column is one place per concern: the record (:class:`JobRow`,
:class:`InsertRow`, ...) that names it, the function that fills it, and
the backend's migration.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple, TypeVar

from ..._validate import check_str
from .._model import (
    LIVE_STATE_NAMES,
    Aborted,
    AwaitingRetry,
    Deleted,
    Enqueued,
    Failed,
    Job,
    JobState,
    Processing,
    Progress,
    QueueInfo,
    RecurringJob,
    Scheduled,
    ServerInfo,
    Succeeded,
    Transition,
    check_headers,
    check_key,
    check_timeout,
    decode_state,
    dump_json,
    stored_state,
)
from .._storage import NextRun

__all__ = [
    "JOB_COLUMNS",
    "LIVE_SQL",
    "QUEUED",
    "TERMINAL",
    "QUEUE_COLUMNS",
    "Admission",
    "QueueRow",
    "aborted_requeue_columns",
    "default_queue",
    "queue_infos",
    "rate_prune_before",
    "rate_window_start",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "RECURRING_COLUMNS",
    "SERVER_COLUMNS",
    "STATE_CLASSES",
    "InsertRow",
    "JobRow",
    "RecurringRow",
    "ServerRow",
    "check_state_class",
    "dump",
    "identity",
    "insert_row",
    "job_from_row",
    "next_occurrence",
    "occurrence",
    "progress_from_json",
    "progress_json",
    "recurring_row",
    "requeue_columns",
    "server_row",
    "transition_columns",
    "updated",
    "processing_updates",
    "state_update",
    "utc",
]

logger = logging.getLogger("trio_monitor.jobs.storage")

_Stored = TypeVar("_Stored")

#: Priorities are 32-bit signed ints on every backend (PostgreSQL's
#: ``integer``), checked before anything is written.
PRIORITY_MIN: Final = -(2**31)
PRIORITY_MAX: Final = 2**31 - 1

STATE_CLASSES: Final[tuple[type[JobState], ...]] = (
    Enqueued,
    Scheduled,
    Processing,
    Succeeded,
    Failed,
    AwaitingRetry,
    Deleted,
    Aborted,
)


def identity(value: _Stored) -> _Stored:
    """The ``stamp``/``when`` converter of a backend that stores datetimes as they are."""
    return value


def utc(value: datetime) -> datetime:
    """``value`` (aware) in UTC; ValueError if it is naive."""
    if value.tzinfo is None:
        raise ValueError(f"timestamps must be timezone-aware (UTC), got naive {value!r}")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


# -- JSON and states -------------------------------------------------------

#: The JSON encoding of payloads, results and state fields (compact, no NaN).
dump = dump_json


_STATE_NAMES: Final[dict[object, str]] = {cls: cls.name for cls in STATE_CLASSES}


def check_state_class(state: object) -> str:
    """The stored name of a state class (``list_jobs(state=...)``); TypeError otherwise."""
    name = _STATE_NAMES.get(state)
    if name is None:
        raise TypeError(f"state must be a job state class, got {state!r}")
    return name


def _check_priority(priority: object, what: str) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"{what} must be an int, not {priority!r}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(
            f"{what} must fit in 32 bits ({PRIORITY_MIN} to {PRIORITY_MAX}), got {priority}"
        )
    return priority


# -- jobs ------------------------------------------------------------------


class JobRow(NamedTuple):
    """A job as read back from storage, by column name (:data:`JOB_COLUMNS`)."""

    id: str
    method: str
    payload: str
    queue: str
    priority: int
    attempts: int
    created_at: Any
    state: str
    state_data: str
    expires_at: Any
    version: int
    headers: str
    timeout: float | None
    unique_key: str | None
    lock_key: str | None
    progress: str | None
    abort_reason: str | None


#: The columns of :class:`JobRow`, in order, for SELECT lists.
JOB_COLUMNS: Final = ", ".join(JobRow._fields)
_JOB_FIELDS: Final = frozenset(JobRow._fields)


def job_from_row(
    row: Iterable[Any], when: Callable[[Any], datetime], state: JobState | None = None
) -> Job:
    """The :class:`Job` a row stores; ``state`` replaces the stored one if given.

    The only place a stored job becomes a :class:`Job`.
    """
    # Unpacked, not made a JobRow first: this runs for every job claimed and finished.
    (
        job_id,
        method,
        payload,
        queue,
        priority,
        attempts,
        created_at,
        state_name,
        state_data,
        expires_at,
        version,
        headers,
        timeout,
        unique_key,
        lock_key,
        progress,
        _,  # abort_reason: not part of a Job
    ) = row
    return Job(
        id=job_id,
        method=method,
        payload=json.loads(payload),
        queue=queue,
        priority=priority,
        attempts=attempts,
        created_at=when(created_at),
        state=decode_state(state_name, state_data) if state is None else state,
        expires_at=None if expires_at is None else when(expires_at),
        version=version,
        # Most jobs have no headers: no decoding for those.
        headers=json.loads(headers) if headers and headers != "{}" else {},
        timeout=timeout,
        unique_key=unique_key,
        lock=lock_key,
        progress=None if progress is None else progress_from_json(progress),
    )


def progress_json(progress: Progress | None) -> str | None:
    """The stored form of a job's progress (JSON text, or NULL)."""
    if progress is None:
        return None
    return dump({"fraction": progress.fraction, "message": progress.message}, "progress")


def progress_from_json(text: str) -> Progress:
    """The inverse of :func:`progress_json`."""
    data = json.loads(text)
    return Progress(data["fraction"], data.get("message"))


class InsertRow(NamedTuple):
    """Every column an inserted job fills, by name."""

    id: str
    method: str
    payload: str
    queue: str
    priority: int
    attempts: int
    created_at: Any
    state: str
    state_data: str
    due_at: Any
    started_at: Any
    server_name: str | None
    expires_at: Any
    version: int
    headers: str
    timeout: float | None
    unique_key: str | None
    lock_key: str | None
    progress: str | None
    abort_reason: str | None

    def job_row(self) -> JobRow:
        """The columns of this row that :func:`job_from_row` reads."""
        return JobRow(
            self.id,
            self.method,
            self.payload,
            self.queue,
            self.priority,
            self.attempts,
            self.created_at,
            self.state,
            self.state_data,
            self.expires_at,
            self.version,
            self.headers,
            self.timeout,
            self.unique_key,
            self.lock_key,
            self.progress,
            self.abort_reason,
        )


def updated(row: JobRow, columns: dict[str, Any]) -> JobRow:
    """``row`` with the columns of a change (:func:`state_update` and friends) written."""
    return row._replace(**{key: value for key, value in columns.items() if key in _JOB_FIELDS})


def insert_row(job: Job, stamp: Callable[[datetime], Any]) -> InsertRow:
    """The row that stores ``job`` as given; TypeError/ValueError before any write."""
    if not isinstance(job, Job):
        raise TypeError(f"expected a Job, got {type(job).__name__}")
    columns, _ = state_update(job.state, stamp)
    return InsertRow(
        id=job.id,
        method=job.method,
        payload=dump(job.payload),
        queue=job.queue,
        priority=_check_priority(job.priority, "Job.priority"),
        attempts=job.attempts,
        created_at=stamp(utc(job.created_at)),
        state=columns["state"],
        state_data=columns["state_data"],
        due_at=columns["due_at"],
        started_at=columns["started_at"],
        server_name=columns["server_name"],
        expires_at=None if job.expires_at is None else stamp(utc(job.expires_at)),
        version=job.version,
        headers=dump(check_headers(job.headers), "headers"),
        timeout=check_timeout(job.timeout),
        unique_key=check_key("unique_key", job.unique_key),
        lock_key=check_key("lock", job.lock),
        progress=progress_json(job.progress),
        abort_reason=None,
    )


def state_update(
    state: JobState, stamp: Callable[[datetime], Any]
) -> tuple[dict[str, Any], JobState]:
    """The state columns storing ``state`` (stamped), and the state as it reads back (in UTC).

    The JSON is :func:`~trio_monitor.jobs._model.stored_state`'s; ``due_at``
    is when a Scheduled/AwaitingRetry job becomes due (the scheduler's
    index), ``started_at`` and ``server_name`` identify a Processing job's
    claim (stale and dead-server sweeps). TypeError if ``state`` is not a
    job state or its fields do not encode; ValueError for a naive datetime.
    Every insert, claim and outcome goes through here.
    """
    name, data, stored = stored_state(state)
    due_at = started_at = server_name = None
    kind = type(stored)  # stored_state accepts the state classes themselves only
    if kind is Processing:
        started_at = stamp(stored.started_at)  # type: ignore[union-attr]
        server_name = stored.server_name  # type: ignore[union-attr]
    elif kind is Scheduled:
        due_at = stamp(stored.enqueue_at)  # type: ignore[union-attr]
    elif kind is AwaitingRetry:
        due_at = stamp(stored.retry_at)  # type: ignore[union-attr]
    return {
        "state": name,
        "state_data": data,
        "due_at": due_at,
        "started_at": started_at,
        "server_name": server_name,
        # Every change of state ends a requested abort (it was carried out,
        # or the job is no longer running).
        "abort_reason": None,
    }, stored


# Stands in for the worker id in one encoding of a claim's Processing state;
# its JSON (\u0000 escapes) can't come out of encoding anything else but itself.
_WORKER_MARK: Final = "\x00trio_monitor worker\x00"


def processing_updates(
    now: datetime, worker_ids: Iterable[str], server_name: str, stamp: Callable[[datetime], Any]
) -> list[tuple[dict[str, Any], JobState]]:
    """``state_update(Processing(now, worker_id, server_name))`` for each worker of a claim.

    The states differ only in the worker id, so the state is encoded once
    and each worker's JSON is that text with its id put in.
    """
    now = utc(now)
    template, _ = state_update(Processing(now, _WORKER_MARK, server_name), stamp)
    head, *tail = template["state_data"].split(dump(_WORKER_MARK))
    changes: list[tuple[dict[str, Any], JobState]] = []
    for worker_id in worker_ids:
        state = Processing(now, worker_id, server_name)
        if len(tail) != 1 or not isinstance(worker_id, str):  # the mark in server_name
            changes.append(state_update(state, stamp))
            continue
        changes.append(({**template, "state_data": head + dump(worker_id) + tail[0]}, state))
    return changes


def requeue_columns(now: datetime, stamp: Callable[[datetime], Any]) -> dict[str, Any]:
    """The columns a requeue writes (besides ``version + 1``): what it keeps is the rest.

    A requeue (promotion, stale claim, dead server) makes the job
    :class:`Enqueued` at ``now`` and clears ``expires_at``: cleanup must
    never delete a job that waits to run. Attempts and everything else stay.
    """
    columns, _ = state_update(Enqueued(utc(now)), stamp)
    return {**columns, "expires_at": None}


def aborted_requeue_columns(
    reason: str, now: datetime, stamp: Callable[[datetime], Any]
) -> dict[str, Any]:
    """What a requeue writes instead for a job whose abort was requested: it ends Aborted.

    A job is requeued when its server stopped, died or lost its claim; if
    someone asked to abort it meanwhile, running it again would break the
    promise that an aborted job does not run to completion: it becomes
    ``Aborted(reason, now)``.
    """
    columns, _ = state_update(Aborted(reason, utc(now)), stamp)
    return {**columns, "expires_at": None}


def transition_columns(
    transition: Transition, stamp: Callable[[datetime], Any]
) -> tuple[dict[str, Any], JobState]:
    """The columns :meth:`Storage.apply` writes for ``transition``, and its stored state.

    ``attempts`` None means "keep the stored count" (the backend keeps it).
    """
    columns, state = state_update(transition.state, stamp)
    expires_at = transition.expires_at
    columns["attempts"] = transition.attempts
    columns["expires_at"] = None if expires_at is None else stamp(utc(expires_at))
    return columns, state


# -- servers ---------------------------------------------------------------


class ServerRow(NamedTuple):
    """A heartbeat row by column name (:data:`SERVER_COLUMNS`); ``queues`` as JSON text."""

    id: str
    name: str
    worker_count: int
    queues: Any
    started_at: Any
    last_heartbeat: Any

    def to_server(self, when: Callable[[Any], datetime]) -> ServerInfo:
        """The :class:`ServerInfo` this row stores."""
        queues = self.queues
        return ServerInfo(
            id=self.id,
            name=self.name,
            worker_count=self.worker_count,
            queues=json.loads(queues) if isinstance(queues, str) else list(queues),
            started_at=when(self.started_at),
            last_heartbeat=when(self.last_heartbeat),
        )


SERVER_COLUMNS: Final = ", ".join(ServerRow._fields)


def server_row(info: ServerInfo, stamp: Callable[[datetime], Any]) -> ServerRow:
    """The row storing ``info`` (queues as JSON text)."""
    return ServerRow(
        id=info.id,
        name=info.name,
        worker_count=info.worker_count,
        queues=dump(list(info.queues), "server queues"),
        started_at=stamp(utc(info.started_at)),
        last_heartbeat=stamp(utc(info.last_heartbeat)),
    )


# -- recurring -------------------------------------------------------------


class RecurringRow(NamedTuple):
    """A recurring template by column name (:data:`RECURRING_COLUMNS`); payload as JSON text."""

    id: str
    cron: str
    method: str
    payload: str
    queue: str
    priority: int
    next_run_at: Any
    timezone: str

    def to_recurring(self, when: Callable[[Any], datetime]) -> RecurringJob:
        """The :class:`RecurringJob` this row stores."""
        return RecurringJob(
            id=self.id,
            cron=self.cron,
            method=self.method,
            payload=json.loads(self.payload),
            queue=self.queue,
            next_run_at=when(self.next_run_at),
            priority=self.priority,
            timezone=self.timezone,
        )


RECURRING_COLUMNS: Final = ", ".join(RecurringRow._fields)


def recurring_row(recurring: RecurringJob, stamp: Callable[[datetime], Any]) -> RecurringRow:
    """The row storing ``recurring``; TypeError/ValueError before any write."""
    return RecurringRow(
        id=recurring.id,
        cron=recurring.cron,
        method=recurring.method,
        payload=dump(recurring.payload),
        queue=recurring.queue,
        priority=_check_priority(recurring.priority, "RecurringJob.priority"),
        next_run_at=stamp(utc(recurring.next_run_at)),
        timezone=check_str("RecurringJob.timezone", recurring.timezone),
    )


def next_occurrence(template: RecurringRow, now: datetime, next_run: NextRun) -> datetime | None:
    """The template's next run after ``now``, or None (logged) if it can't be computed.

    One template with a cron that can't be evaluated must not stop every
    other recurring job, on any backend: it is logged and skipped, and left
    as it is (it is tried again at the next poll).
    """
    try:
        if template.timezone == "UTC":
            return utc(next_run(template.cron, now))
        return utc(next_run(template.cron, now, template.timezone))
    except Exception:
        logger.exception(
            "recurring job %r has a schedule that can't be evaluated (%r); skipped",
            template.id,
            template.cron,
        )
        return None


def occurrence(template: RecurringRow, now: datetime) -> Job:
    """The job one occurrence of ``template`` enqueues at ``now`` (not stored yet)."""
    now = utc(now)
    return Job(
        id=str(uuid.uuid4()),
        method=template.method,
        payload=json.loads(template.payload),
        queue=template.queue,
        priority=template.priority,
        attempts=0,
        created_at=now,
        state=Enqueued(now),
    )


# -- queues and flow control -----------------------------------------------

#: States an abort ends at once (the job has not started).
QUEUED: Final = ("enqueued", "scheduled", "awaiting_retry")
#: Terminal states (what ``Client.wait`` waits for).
TERMINAL: Final = ("succeeded", "failed", "aborted", "deleted")

#: State names of live jobs (hold their ``unique_key``), as an SQL list.
LIVE_SQL: Final = ", ".join(f"'{name}'" for name in LIVE_STATE_NAMES)


class QueueRow(NamedTuple):
    """A queue's stored settings (:data:`QUEUE_COLUMNS`)."""

    name: str
    paused: bool
    max_running: int | None
    rate_count: int | None
    rate_seconds: float | None

    @property
    def limits_claims(self) -> bool:
        """Whether a claim from this queue must look at the settings at all."""
        return bool(self.paused) or self.max_running is not None or self.rate_count is not None

    def info(self, counts: dict[str, int]) -> QueueInfo:
        """The :class:`QueueInfo` of this queue with its job ``counts``."""
        rate = None
        if self.rate_count is not None and self.rate_seconds is not None:
            rate = (self.rate_count, self.rate_seconds)
        return QueueInfo(self.name, bool(self.paused), self.max_running, rate, counts)


QUEUE_COLUMNS: Final = ", ".join(QueueRow._fields)


def default_queue(name: str) -> QueueRow:
    """The settings of a queue nobody configured: running, no limits."""
    return QueueRow(name, False, None, None, None)


def queue_infos(
    settings: Iterable[QueueRow], counts: dict[tuple[str, str], int]
) -> list[QueueInfo]:
    """Every queue with settings or jobs, by name (what ``list_queues`` returns)."""
    rows = {row.name: row for row in settings}
    per_queue: dict[str, dict[str, int]] = {}
    for (queue, state), n in counts.items():
        per_queue.setdefault(queue, {})[state] = n
    names = sorted(set(rows) | set(per_queue))
    return [rows.get(name, default_queue(name)).info(per_queue.get(name, {})) for name in names]


class Admission:
    """Which claimable jobs a claim may start, in claim order: the flow-control rules.

    Built, inside the claim's transaction, from the settings of the queues
    concerned, how many of their jobs are Processing, how many started in
    each rate window, and which locks Processing jobs hold. :meth:`admit`
    is then asked about each candidate in priority-then-age order; a job
    refused keeps its place for the next claim.
    """

    __slots__ = ("_held", "_running", "_settings", "_started")

    def __init__(
        self,
        settings: dict[str, QueueRow],
        running: dict[str, int],
        started: dict[str, int],
        held_locks: set[str],
    ) -> None:
        self._settings = settings
        self._running = dict(running)
        self._started = dict(started)
        self._held = set(held_locks)

    def admit(self, queue: str, lock_key: str | None) -> bool:
        """Whether a job of ``queue`` holding ``lock_key`` may start; if so, count it."""
        if lock_key is not None and lock_key in self._held:
            return False
        if self.closed(queue):
            return False
        if queue in self._settings:
            self._running[queue] = self._running.get(queue, 0) + 1
            self._started[queue] = self._started.get(queue, 0) + 1
        if lock_key is not None:
            self._held.add(lock_key)
        return True

    def closed(self, queue: str) -> bool:
        """Whether no job of ``queue`` may start now, whatever its lock (paused, or at a limit)."""
        settings = self._settings.get(queue)
        if settings is None:
            return False
        return (
            settings.paused
            or (
                settings.max_running is not None
                and self._running.get(queue, 0) >= settings.max_running
            )
            or (
                settings.rate_count is not None
                and self._started.get(queue, 0) >= settings.rate_count
            )
        )


def rate_window_start(settings: QueueRow, now: datetime) -> datetime | None:
    """The start (exclusive) of the rate window ending at ``now``, or None without a rate."""
    if settings.rate_seconds is None or settings.rate_count is None:
        return None
    return utc(now) - timedelta(seconds=settings.rate_seconds)


def rate_prune_before(settings: QueueRow, now: datetime) -> datetime | None:
    """Starts at or before this may be forgotten: one window before the current one.

    Not the window's own start: claimers' clocks differ a little, and a
    start a claimer with a later clock would drop may still count for one
    whose clock is behind.
    """
    start = rate_window_start(settings, now)
    if start is None or settings.rate_seconds is None:
        return None
    return start - timedelta(seconds=settings.rate_seconds)
