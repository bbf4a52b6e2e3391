"""A storage wrapper whose calls can be made to fail or hang, for the edge tests."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_monitor import jobs


class Fault(enum.Enum):
    #: Calls go through.
    NONE = "none"
    #: Calls raise OSError, as a database that is down does.
    DOWN = "down"
    #: Calls never return (until cancelled), as a lock held elsewhere.
    HANG = "hang"


class FaultyStorage:
    """Wraps a storage; every async call obeys :attr:`fault` (only ``aclose`` is spared).

    ``calls`` counts the calls made per method while a fault was on, so a
    test can see that loops back off instead of spinning.
    """

    def __init__(self, inner: jobs.Storage) -> None:
        self.inner = inner
        self.fault = Fault.NONE
        self.faulty: set[str] | None = None  # None: every method
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "aclose" or not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.fault is not Fault.NONE and (self.faulty is None or name in self.faulty):
                self.calls[name] = self.calls.get(name, 0) + 1
                if self.fault is Fault.DOWN:
                    await trio.lowlevel.checkpoint()
                    raise OSError(f"connection refused ({name})")
                await trio.sleep_forever()
            method: Callable[..., Awaitable[Any]] = attr
            return await method(*args, **kwargs)

        return call
