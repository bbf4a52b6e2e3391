"""Failure reports: what every component tells its subscribers.

These are plain frozen values. One shape serves the task monitor, the
background runtime and the task registry, so that one observer can watch all
of them.
"""

from __future__ import annotations

import itertools
import traceback as _traceback

import attrs

__all__ = [
    "EarlyTermination",
    "Error",
    "FailureReason",
    "Panic",
    "TaskFailure",
    "TaskInfo",
    "next_task_id",
]

# itertools.count is atomic under the GIL: ids stay unique across threads and
# across every component of the process.
next_task_id = itertools.count(1).__next__


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
      message (str | None): ``str(exception)``, or None when that is empty.
      traceback (str | None): The formatted traceback of the exception.
      exception (BaseException): The exception object itself.
    """

    message: str | None
    traceback: str | None
    exception: BaseException

    @classmethod
    def from_exception(cls, exc: BaseException) -> Panic:
        """The report for ``exc``: its message, formatted traceback and itself."""
        return cls(
            message=str(exc) or None,
            traceback="".join(_traceback.format_exception(exc)),
            exception=exc,
        )


@attrs.frozen(eq=False)
class Error:
    """The task raised one of the errors it was declared to raise.

    Attributes:
      error (str): ``str(exception)``.
      exception (BaseException): The exception object itself.
    """

    error: str
    exception: BaseException


@attrs.frozen
class EarlyTermination:
    """A task expected to run forever returned."""


#: Why a task failed: one of :class:`Panic`, :class:`Error`,
#: :class:`EarlyTermination`.
FailureReason = Panic | Error | EarlyTermination


@attrs.frozen(eq=False)
class TaskFailure:
    """A report that a supervised task failed.

    Attributes:
      task (TaskInfo): Which task failed.
      reason (Panic | Error | EarlyTermination): Why.
    """

    task: TaskInfo
    reason: FailureReason
