"""The in-process half of ``Storage.wait_for_work``, shared by every backend."""

from __future__ import annotations

import trio

__all__ = ["WakeUp"]


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
