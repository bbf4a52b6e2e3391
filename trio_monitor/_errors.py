"""Errors raised by the components (not by the tasks they supervise)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._failures import TaskFailure

__all__ = [
    "QueueFull",
    "RestartIntensityExceeded",
    "RuntimeClosed",
    "ShutdownDeadlineExceeded",
    "ShutdownTimeout",
    "SpawnError",
]


class SpawnError(Exception):
    """A job could not be accepted. Base of :class:`QueueFull` and :class:`RuntimeClosed`."""


class QueueFull(SpawnError):
    """The background runtime's queue is at ``max_queue_size``.

    Shed the load, or use :meth:`RuntimeHandle.spawn_wait` to wait for room.
    """

    def __init__(self) -> None:
        super().__init__("background task queue is full")


class RuntimeClosed(SpawnError):
    """The background runtime is shutting down or shut down: it accepts no job."""

    def __init__(
        self, message: str = "background runtime is closed and accepts no new jobs"
    ) -> None:
        super().__init__(message)


class ShutdownTimeout(Exception):
    """The runtime's drain did not finish within ``drain_timeout``.

    When this is raised, nothing of the runtime is running any more.

    Attributes:
      cancelled (int): Jobs cancelled while running, whatever they did with
        the cancellation (an intentional stop is never a failure).
      not_started (int): Accepted jobs that never started.
    """

    def __init__(self, cancelled: int, not_started: int) -> None:
        super().__init__(
            f"background runtime did not drain in time: {cancelled} running job(s) cancelled, "
            f"{not_started} queued job(s) never started"
        )
        self.cancelled = cancelled
        self.not_started = not_started


class ShutdownDeadlineExceeded(Exception):
    """Tasks were still running at the registry's join deadline and were cancelled.

    Raised once the cancelled tasks have exited.

    Attributes:
      deadline (float): The deadline that was exceeded, in seconds.
      pending (int): How many tasks had to be cancelled.
    """

    def __init__(self, deadline: float, pending: int) -> None:
        super().__init__(
            f"{pending} task(s) still running after the {deadline:g}s shutdown deadline "
            "were cancelled"
        )
        self.deadline = deadline
        self.pending = pending


class RestartIntensityExceeded(Exception):
    """A supervisor needed more than ``max_restarts`` restarts within ``within`` seconds.

    The supervisor gave up: it stopped all its children (in reverse start
    order) and raised this from its ``async with``. It is an
    :class:`Exception`, so a supervisor run as another supervisor's child
    fails like any child, and its parent applies its own policy: that is
    how a supervision tree escalates.

    Attributes:
      max_restarts (int): The supervisor's ``max_restarts``.
      within (float): The supervisor's ``within``, in seconds.
      failures (list[TaskFailure]): The failures in the window that ended
        it, oldest first; the last one is the failure that was not
        restarted.
    """

    def __init__(self, max_restarts: int, within: float, failures: Sequence[TaskFailure]) -> None:
        names = ", ".join(dict.fromkeys(repr(f.task.name) for f in failures))
        super().__init__(
            f"more than {max_restarts} restart(s) within {within:g}s "
            f"({len(failures)} failure(s), of {names}): the supervisor gave up; "
            "its .failures say why (raise max_restarts or within if such bursts are expected)"
        )
        self.max_restarts = max_restarts
        self.within = within
        self.failures = list(failures)
