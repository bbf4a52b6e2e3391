"""Values of the job server: jobs, their states, recurring templates, servers.

States are small frozen classes checked with ``isinstance``. A :class:`Job`
is mutable (``job.state`` may be reassigned before it is stored) and carries a
``version`` that storage bumps on every change: every transition is a
compare-and-swap on it, which is what keeps a late finisher from overwriting
a job that was reclaimed meanwhile.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import attrs

__all__ = [
    "AwaitingRetry",
    "Deleted",
    "Enqueued",
    "Failed",
    "Job",
    "JobState",
    "Processing",
    "RecurringJob",
    "Scheduled",
    "ServerInfo",
    "Succeeded",
    "Transition",
    "Transitioned",
    "decode_state",
    "dump_json",
    "encode_state",
    "stored_state",
    "utcnow",
]


def utcnow() -> datetime:
    """The current wall-clock time, timezone-aware UTC."""
    return datetime.now(UTC)


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dump_json(value: object, what: str = "payload") -> str:
    """Serialise ``value`` to compact JSON, or raise :class:`TypeError` naming the problem.

    A value nested too deeply for Python's recursion limit is a TypeError
    too: it can't be stored, which is all the caller needs to know.
    """
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"job {what} must be JSON-serialisable: {exc}") from None


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"timestamps must be timezone-aware (UTC), got naive {value!r}")
    return value


@attrs.frozen
class Enqueued:
    """Waiting to be claimed by a worker.

    Attributes:
      enqueued_at (datetime): When it became claimable.
    """

    name: ClassVar[str] = "enqueued"
    enqueued_at: datetime = attrs.field(factory=utcnow, converter=_aware)


@attrs.frozen
class Scheduled:
    """Waiting for a time; the scheduler enqueues it then.

    Attributes:
      enqueue_at (datetime): When it becomes :class:`Enqueued`.
    """

    name: ClassVar[str] = "scheduled"
    enqueue_at: datetime = attrs.field(converter=_aware)


@attrs.frozen
class Processing:
    """Claimed by a worker and running.

    Attributes:
      started_at (datetime): When the claim was made.
      worker_id (str): The worker that claimed it.
      server_name (str): The claiming server's identity
        (``"name#uuid"`` when heartbeats are on).
    """

    name: ClassVar[str] = "processing"
    started_at: datetime = attrs.field(converter=_aware)
    worker_id: str
    server_name: str


@attrs.frozen
class Succeeded:
    """Finished successfully.

    Attributes:
      result (object): The worker's JSON-serialisable return value (or None).
      duration (float): Seconds the worker ran.
    """

    name: ClassVar[str] = "succeeded"
    result: Any
    duration: float


@attrs.frozen
class Failed:
    """Finished with an error after its last attempt.

    Attributes:
      error (str): Why, as text.
    """

    name: ClassVar[str] = "failed"
    error: str


@attrs.frozen
class AwaitingRetry:
    """Failed an attempt; enqueued again at ``retry_at``.

    Attributes:
      retry_at (datetime): When it becomes :class:`Enqueued` again.
      error (str): The error of the failed attempt.
    """

    name: ClassVar[str] = "awaiting_retry"
    retry_at: datetime = attrs.field(converter=_aware)
    error: str = ""


@attrs.frozen
class Deleted:
    """Removed by request; kept until its TTL expires."""

    name: ClassVar[str] = "deleted"


#: Any job state.
JobState = Enqueued | Scheduled | Processing | Succeeded | Failed | AwaitingRetry | Deleted

_STATE_CLASSES: dict[str, type[JobState]] = {
    cls.name: cls
    for cls in (Enqueued, Scheduled, Processing, Succeeded, Failed, AwaitingRetry, Deleted)
}


# Per state class: its fields in order, and whether each is a datetime.
_STATE_FIELDS: dict[type[Any], tuple[tuple[str, bool], ...]] = {
    cls: tuple((f.name, f.type in ("datetime", datetime)) for f in attrs.fields(cls))
    for cls in _STATE_CLASSES.values()
}


def stored_state(state: JobState) -> tuple[str, str, JobState]:
    """``(state name, JSON of its fields, the state as it reads back)``.

    The one encoding of a state: datetimes become ISO 8601 text in UTC (so
    the state read back is ``state`` in UTC). TypeError if ``state`` is not a
    job state or a field does not encode; ValueError for a naive datetime.
    """
    try:
        plan = _STATE_FIELDS[type(state)]
    except KeyError:
        raise TypeError(f"not a job state: {state!r}") from None
    fields: dict[str, Any] = {}
    converted = False
    for name, is_datetime in plan:
        value = getattr(state, name)
        if is_datetime:
            if value.tzinfo is not UTC:
                value = _aware(value).astimezone(UTC)
                converted = True
            fields[name] = value.isoformat()
        else:
            fields[name] = value
    data = dump_json(fields, "result")
    return state.name, data, decode_state(state.name, data) if converted else state


def encode_state(state: JobState) -> tuple[str, str]:
    """``(state name, JSON of its fields)`` for storage backends (see :func:`stored_state`)."""
    name, data, _ = stored_state(state)
    return name, data


def decode_state(name: str, data: str) -> JobState:
    """The inverse of :func:`encode_state`."""
    cls = _STATE_CLASSES[name]
    fields: dict[str, Any] = json.loads(data) if data else {}
    for field in attrs.fields(cls):
        if field.type in ("datetime", datetime) and field.name in fields:
            fields[field.name] = datetime.fromisoformat(str(fields[field.name]))
    return cls(**fields)


@attrs.define
class Job:
    """A unit of persistent background work.

    Attributes:
      id (str): Unique id (a UUID string).
      method (str): Name of the worker that runs it.
      payload (object): JSON-serialisable argument.
      queue (str): Queue name; servers claim from their configured queues.
      priority (int): Higher runs first among claimable jobs.
      attempts (int): Incremented each time a worker claims the job.
      created_at (datetime): When the job was made.
      state (JobState): Where it is in its life.
      expires_at (datetime | None): When cleanup may delete it (terminal
        states only).
      version (int): Storage revision, bumped on every stored change and
        used for compare-and-swap. Set by storage; leave it alone.
    """

    id: str
    method: str
    payload: Any
    queue: str = "default"
    priority: int = 0
    attempts: int = 0
    created_at: datetime = attrs.field(factory=utcnow)
    state: JobState = attrs.field(factory=Enqueued)
    expires_at: datetime | None = None
    version: int = 0

    @classmethod
    def new(
        cls,
        method: str,
        payload: Any,
        queue: str = "default",
        priority: int = 0,
        *,
        now: datetime | None = None,
    ) -> Job:
        """A fresh :class:`Enqueued` job with a new id, created ``now`` (default: wall clock)."""
        if now is None:
            now = utcnow()
        return cls(
            id=str(uuid.uuid4()),
            method=method,
            payload=payload,
            queue=queue,
            priority=priority,
            created_at=now,
            state=Enqueued(now),
        )


@attrs.frozen
class Transition:
    """A compare-and-swap on one job, applied by :meth:`Storage.apply`.

    It succeeds only if the stored job still has ``expected_version``.

    Attributes:
      job_id (str): The job.
      expected_version (int): The version the caller read.
      state (JobState): The new state.
      attempts (int | None): New attempt count, or None to keep it.
      expires_at (datetime | None): New expiry (None clears it).
    """

    job_id: str
    expected_version: int
    state: JobState
    attempts: int | None = None
    expires_at: datetime | None = None


@attrs.frozen
class Transitioned:
    """A change storage made: the job as it is now and the state it left."""

    job: Job
    old_state: JobState


@attrs.define
class RecurringJob:
    """A cron template that enqueues a job at each occurrence.

    Attributes:
      id (str): Unique template id; scheduling it again replaces it.
      cron (str): Six-field cron expression, seconds first.
      method (str): Worker name of the jobs it makes.
      payload (object): JSON-serialisable payload of the jobs it makes.
      queue (str): Queue of the jobs it makes.
      next_run_at (datetime): The next occurrence not yet enqueued.
      priority (int): Priority of the jobs it makes.
    """

    id: str
    cron: str
    method: str
    payload: Any
    queue: str
    next_run_at: datetime
    priority: int = 0


@attrs.define
class ServerInfo:
    """A running server's heartbeat row.

    Attributes:
      id (str): ``"name#uuid"``, unique per start.
      name (str): The configured ``server_name``.
      worker_count (int): Its worker count.
      queues (list[str]): The queues it claims from (empty: all).
      started_at (datetime): When it registered.
      last_heartbeat (datetime): Last bump.
    """

    id: str
    name: str
    worker_count: int
    queues: list[str]
    started_at: datetime
    last_heartbeat: datetime
