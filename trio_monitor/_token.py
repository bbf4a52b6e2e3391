"""The shutdown token: a one-way, Event-like "please stop" signal."""

from __future__ import annotations

import trio

__all__ = ["ShutdownToken"]


class ShutdownToken:
    """A request to stop, which cooperative tasks watch.

    Like :class:`trio.Event`, it goes from unset to set once and stays set.
    Setting it cancels nothing: tasks that watch it decide how to wind down,
    which is what makes a graceful phase possible before a deadline cancels
    whatever is left.

    Use it from the Trio thread; from another thread, go through
    ``trio.from_thread.run_sync(token.set)``.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        """Request shutdown. Idempotent; wakes every waiter."""
        self._event.set()

    def is_set(self) -> bool:
        """Whether shutdown has been requested."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Block until shutdown is requested (returns at once if it was)."""
        await self._event.wait()

    def __repr__(self) -> str:
        return f"<ShutdownToken {'set' if self.is_set() else 'unset'}>"
