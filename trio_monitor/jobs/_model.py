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
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, cast

import attrs

from .._validate import MAX_SECONDS, check_fraction, check_seconds, check_str, shown

__all__ = [
    "LIVE_STATE_NAMES",
    "Aborted",
    "AwaitingRetry",
    "Deleted",
    "Enqueued",
    "Failed",
    "Job",
    "JobState",
    "Processing",
    "Progress",
    "QueueInfo",
    "RecurringJob",
    "Scheduled",
    "ServerInfo",
    "Succeeded",
    "Transition",
    "Transitioned",
    "check_headers",
    "check_key",
    "check_timeout",
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
        raise ValueError(f"timestamps must be timezone-aware (UTC), got naive {shown(value)}")
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
    """Claimed by a server: running, or claimed ahead and about to run.

    A server may claim a few short jobs ahead of its idle workers (at most
    ``fetch_batch_size``, see :class:`~trio_monitor.jobs.ServerConfig`):
    those are Processing from the claim, before they start.

    Attributes:
      started_at (datetime): When the claim was made.
      worker_id (str): The worker id the claim stamped on it; the job runs
        with this ``ctx.worker_id``. Unique among the jobs a server holds
        at once.
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
      finished_at (datetime): When it finished (aware UTC; default now).
        Not compared by ``==``: two outcomes are equal when they say the same.
    """

    name: ClassVar[str] = "succeeded"
    result: Any
    duration: float
    finished_at: datetime = attrs.field(factory=utcnow, converter=_aware, eq=False)


@attrs.frozen
class Failed:
    """Finished with an error after its last attempt.

    Attributes:
      error (str): Why, as text.
      finished_at (datetime): When it finished (aware UTC; default now).
        Not compared by ``==``: two outcomes are equal when they say the same.
    """

    name: ClassVar[str] = "failed"
    error: str
    finished_at: datetime = attrs.field(factory=utcnow, converter=_aware, eq=False)


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


@attrs.frozen
class Aborted:
    """Stopped by request (:meth:`Client.abort <trio_monitor.jobs.Client.abort>`); never retried.

    Attributes:
      reason (str): Why, as the aborting caller gave it.
      finished_at (datetime): When it became Aborted (aware UTC; default now;
        not compared by ``==``).
    """

    name: ClassVar[str] = "aborted"
    reason: str = "aborted"
    finished_at: datetime = attrs.field(factory=utcnow, converter=_aware, eq=False)


#: Any job state.
JobState = (
    Enqueued | Scheduled | Processing | Succeeded | Failed | AwaitingRetry | Deleted | Aborted
)

_STATE_CLASSES: dict[str, type[JobState]] = {
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

#: The states in which a job is *live*: it will run, or runs now. A
#: ``unique_key`` is held by at most one live job.
LIVE_STATE_NAMES: tuple[str, ...] = ("enqueued", "scheduled", "awaiting_retry", "processing")


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
        raise TypeError(f"not a job state: {shown(state)}") from None
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


def _fraction(value: object) -> float:
    return check_fraction("fraction", value)


def _check_message(_: object, __: object, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"progress message must be a str or None, not {shown(value)}")


@attrs.frozen
class Progress:
    """How far a running job says it is (``ctx.report_progress``).

    Attributes:
      fraction (float): Done so far, in ``[0, 1]``.
      message (str | None): What it is doing, for people.
    """

    fraction: float = attrs.field(converter=_fraction)
    message: str | None = attrs.field(default=None, validator=_check_message)


def check_headers(value: object) -> dict[str, str]:
    """``value`` as a fresh ``dict[str, str]`` (None: empty); TypeError naming the bad entry."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, not {shown(value)}")
    headers: dict[str, str] = {}
    items: Mapping[object, object] = cast(Mapping[object, object], value)
    for key, item in items.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"headers must map str to str, got {shown(key)}: {shown(item)}")
        headers[key] = item
    return headers


def check_timeout(value: object) -> float | None:
    """A job's ``timeout``: None, or positive finite seconds (at most ``MAX_SECONDS``)."""
    if value is None:
        return None
    return check_seconds("timeout", value, positive=True, maximum=MAX_SECONDS)


def check_key(name: str, value: object) -> str | None:
    """A ``unique_key`` or ``lock``: None or a non-empty str."""
    return None if value is None else check_str(name, value)


def _priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an int, not {shown(value)}")
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"priority must fit in 32 bits (-2**31 to 2**31 - 1), got {value}")
    return value


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
      headers (dict[str, str]): Carried from enqueue to the worker
        (trace context, tenant, request id).
      timeout (float | None): Seconds one attempt may run; beats the
        method's and the server's ``job_timeout``.
      unique_key (str | None): While a live job (Enqueued, Scheduled,
        AwaitingRetry, Processing) has this key, enqueueing another stores
        nothing and returns the live job's id.
      lock (str | None): At most one job with this lock is Processing at
        any moment, across all servers.
      progress (Progress | None): What the running job last reported.
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
    headers: dict[str, str] = attrs.field(factory=dict[str, str])
    timeout: float | None = None
    unique_key: str | None = None
    lock: str | None = None
    progress: Progress | None = None

    @classmethod
    def new(
        cls,
        method: str,
        payload: Any,
        queue: str = "default",
        priority: int = 0,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        unique_key: str | None = None,
        lock: str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Job:
        """A fresh job with a new id, created ``now`` (default: wall clock).

        It is :class:`Enqueued`, or :class:`Scheduled` when ``delay``
        (seconds from ``now``) or ``run_at`` (an aware datetime) is given
        (not both). Every argument is checked here, before anything is
        stored: :class:`TypeError` for a wrong type, :class:`ValueError` for
        a value out of range, naming the argument. The payload is checked
        for JSON when it is stored.
        """
        check_str("method", method)
        check_str("queue", queue)
        _priority(priority)
        checked_headers = check_headers(headers)
        checked_timeout = check_timeout(timeout)
        check_key("unique_key", unique_key)
        check_key("lock", lock)
        if now is None:
            now = utcnow()
        state: JobState = Enqueued(now)
        if delay is not None and run_at is not None:
            raise ValueError("give either delay or run_at, not both")
        if delay is not None:
            seconds = check_seconds("delay", delay, maximum=MAX_SECONDS)
            if seconds > 0:
                state = Scheduled(now + timedelta(seconds=seconds))
        elif run_at is not None:
            if not isinstance(run_at, datetime):
                raise TypeError(f"run_at must be a datetime, not {shown(run_at)}")
            if run_at.tzinfo is None:
                raise ValueError(f"run_at must be timezone-aware, got naive {shown(run_at)}")
            if run_at > now:
                state = Scheduled(run_at)
        return cls(
            id=str(uuid.uuid4()),
            method=method,
            payload=payload,
            queue=queue,
            priority=priority,
            created_at=now,
            state=state,
            headers=checked_headers,
            timeout=checked_timeout,
            unique_key=unique_key,
            lock=lock,
        )


@attrs.frozen
class QueueInfo:
    """A queue as :meth:`Client.queues <trio_monitor.jobs.Client.queues>` reports it.

    Attributes:
      name (str): The queue.
      paused (bool): Whether servers start nothing from it.
      max_running (int | None): At most this many of its jobs Processing at
        once (None: no cap).
      rate (tuple[int, float] | None): ``(n, seconds)``: at most ``n`` of its
        jobs start in any ``seconds``-long window (None: no cap).
      counts (dict[str, int]): Its jobs per state name.
    """

    name: str
    paused: bool = False
    max_running: int | None = None
    rate: tuple[int, float] | None = None
    counts: dict[str, int] = attrs.field(factory=dict[str, int])


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
      timezone (str): IANA zone the cron is evaluated in (default UTC).
    """

    id: str
    cron: str
    method: str
    payload: Any
    queue: str
    next_run_at: datetime
    priority: int = 0
    timezone: str = "UTC"


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
