"""The in-process wake-ups of the storage protocol, shared by every backend."""

from __future__ import annotations

import trio

__all__ = ["InProcessPush", "WakeUp"]


class WakeUp:
    """Wakes every waiter at once; a waiter arriving later waits for the next notify."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class InProcessPush:
    """Aborts and finishes pushed within this process only (memory, SQLite).

    Such a backend cannot hear other processes: their aborts and finishes
    are seen by polling (``aborts_requested``, ``get``), so a waiter needs
    no registration. The backend provides ``_check_open`` and the two
    :class:`WakeUp` hubs, and notifies them when it stores a change.
    """

    _aborts: WakeUp
    _finished: WakeUp

    def _check_open(self) -> None:
        raise NotImplementedError

    async def wait_for_abort(self) -> None:
        """Return once an abort may have been requested in this process."""
        self._check_open()
        await self._aborts.wait()

    async def wait_for_finish(self) -> None:
        """Return once a job may have finished in this process."""
        self._check_open()
        await self._finished.wait()

    async def watch_finish(self, job_id: str, token: str) -> None:
        """Nothing to register: finishes are pushed in process only."""
        self._check_open()
        await trio.lowlevel.checkpoint()

    async def unwatch_finish(self, token: str) -> None:
        """Nothing to remove (see :meth:`watch_finish`)."""
        await trio.lowlevel.checkpoint()
