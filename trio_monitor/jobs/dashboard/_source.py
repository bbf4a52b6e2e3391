"""What the dashboard reads and changes: the part of ``jobs.Client`` it uses.

The pages go through a :class:`DashboardSource`, the subset of
:class:`~trio_monitor.jobs.Client` (SPEC §6) they need, and nothing else:
:func:`source_for` gives the client over the app's storage. Naming the
subset keeps the pages honest about what they touch, and lets a benchmark
or a test put another implementation behind the same app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .._client import Client
from .._model import Job, JobState, QueueInfo, RecurringJob, ServerInfo
from .._storage import Storage

__all__ = ["DashboardSource", "source_for"]


class DashboardSource(Protocol):
    """Everything the dashboard reads and changes; a subset of ``jobs.Client``.

    Listings are newest first; ``before`` is the id of the last job of the
    previous page (a keyset cursor). ``counts`` is keyed ``(queue, state
    name)``. The actions return False when the job is not in a state the
    action applies to (or does not exist).
    """

    async def list_jobs(
        self,
        *,
        state: type[JobState] | None = None,
        queue: str | None = None,
        method: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]: ...

    async def counts(self) -> dict[tuple[str, str], int]: ...

    async def queues(self) -> Sequence[QueueInfo]: ...

    async def servers(self) -> list[ServerInfo]: ...

    async def recurring(self) -> list[RecurringJob]: ...

    async def retry(self, job_id: str) -> bool: ...

    async def abort(self, job_id: str) -> bool: ...

    async def delete(self, job_id: str) -> bool: ...

    async def pause_queue(self, name: str) -> None: ...

    async def resume_queue(self, name: str) -> None: ...

    async def set_queue_limits(
        self, name: str, *, max_running: int | None, rate: tuple[int, float] | None
    ) -> None: ...


def source_for(storage: Storage) -> DashboardSource:
    """What the dashboard for ``storage`` reads through: ``jobs.Client(storage)``."""
    return Client(storage)
