"""Failure reports: what every component tells its subscribers.

These are plain frozen values. One shape serves the task monitor, the
background runtime, the task registry and the supervisor, so that one
observer can watch all of them.
"""

from __future__ import annotations

import itertools
import traceback as _traceback

import attrs

__all__ = [
    "EarlyTermination",
    "Error",
    "FailureReason",
    "Hung",
    "Panic",
    "TaskFailure",
    "TaskInfo",
    "describe_exception",
    "describe_reason",
    "next_task_id",
]

# itertools.count is atomic under the GIL: ids stay unique across threads and
# across every component of the process.
next_task_id = itertools.count(1).__next__


def describe_exception(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in naming its type when that raises.

    Describing a failure must never fail: a task whose exception has a broken
    ``__str__`` is still reported, and the code reporting it (a supervisor,
    a runtime worker, a log call) goes on. Use this wherever an exception
    from user code becomes text; log it with ``%s`` and this, never with
    ``%r`` (``__repr__`` may raise too) or ``%s`` on the exception itself.

    The stand-in is ``"<unprintable T>"``, ``T`` the exception's type name.
    Only :class:`Exception` from ``__str__`` is absorbed: a
    :class:`BaseException` (``KeyboardInterrupt``...) raised there propagates.
    """
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {_type_name(exc)}>"


def _type_name(obj: object) -> str:
    # A metaclass can make even __qualname__ misbehave.
    name = getattr(type(obj), "__qualname__", None)
    return name if isinstance(name, str) else "object"


def _safe_repr(exc: BaseException) -> str:
    # Panic and Error reprs show the exception; that must not raise either.
    try:
        return repr(exc)
    except Exception:
        return f"<{_type_name(exc)}: {describe_exception(exc)}>"


def _format_traceback(exc: BaseException) -> str | None:
    # The traceback module copes with a failing __str__; this guards the rest
    # (a hostile __notes__, say), so that a report is always built.
    try:
        return "".join(_traceback.format_exception(exc))
    except Exception:
        return None


@attrs.frozen
class TaskInfo:
    """Identity of a supervised task.

    Attributes:
      id (int): Unique within the process, across all components.
      name (str): The name given when the task was spawned.
    """

    id: int
    name: str


@attrs.frozen(eq=False)
class Panic:
    """The task raised an exception it was not expected to raise.

    Attributes:
      message (str | None): ``str(exception)``, or None when that is empty;
        ``"<unprintable T>"`` when ``str()`` itself raises (``T`` the
        exception's type name).
      traceback (str | None): The formatted traceback of the exception
        (None only if even formatting it failed).
      exception (BaseException): The exception object itself.
    """

    message: str | None
    traceback: str | None
    exception: BaseException = attrs.field(repr=_safe_repr)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Panic:
        """The report for ``exc``: its message, formatted traceback and itself.

        Never raises because of ``exc``: see :func:`describe_exception`.
        """
        return cls(
            message=describe_exception(exc) or None,
            traceback=_format_traceback(exc),
            exception=exc,
        )


@attrs.frozen(eq=False)
class Error:
    """The task raised one of the errors it was declared to raise.

    Attributes:
      error (str): ``str(exception)``, or ``"<unprintable T>"`` when
        ``str()`` itself raises (``T`` the exception's type name).
      exception (BaseException): The exception object itself.
    """

    error: str
    exception: BaseException = attrs.field(repr=_safe_repr)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Error:
        """The report for ``exc``; never raises because of ``exc``."""
        return cls(describe_exception(exc), exc)


@attrs.frozen
class EarlyTermination:
    """A task expected to run forever returned."""


@attrs.frozen
class Hung:
    """A supervised child missed its heartbeat, so it was cancelled.

    Only the supervisor reports it, for a child started with a
    ``liveness_timeout`` that went that long without calling
    :func:`trio_monitor.heartbeat`. Whatever the child did while it was
    being cancelled (raised, returned) is not reported: the verdict is.

    Attributes:
      liveness_timeout (float): The child's ``liveness_timeout``, in seconds.
    """

    liveness_timeout: float


#: Why a task failed: one of :class:`Panic`, :class:`Error`,
#: :class:`EarlyTermination`, :class:`Hung`.
FailureReason = Panic | Error | EarlyTermination | Hung


def describe_reason(reason: FailureReason) -> str:
    """One safe line saying why a task failed, for log messages.

    ``"ValueError: boom"`` for a :class:`Panic`, ``"error OSError: reset"``
    for an :class:`Error`, ``"returned early"`` for an
    :class:`EarlyTermination`, ``"hung (no heartbeat for 10s)"`` for a
    :class:`Hung`; built with :func:`describe_exception`, so it never raises
    because of the exception.
    """
    if isinstance(reason, EarlyTermination):
        return "returned early"
    if isinstance(reason, Hung):
        return f"hung (no heartbeat for {reason.liveness_timeout:g}s)"
    text = f"{_type_name(reason.exception)}: {describe_exception(reason.exception)}"
    return text if isinstance(reason, Panic) else f"error {text}"


@attrs.frozen(eq=False)
class TaskFailure:
    """A report that a supervised task failed.

    Attributes:
      task (TaskInfo): Which task failed.
      reason (Panic | Error | EarlyTermination | Hung): Why.
    """

    task: TaskInfo
    reason: FailureReason
