"""Bounded fan-out of values to any number of subscribers.

Publishing never blocks and never fails: a subscriber whose buffer is full
misses the value (counted in :attr:`Broadcaster.dropped`), and a subscriber
that closed its receive channel is forgotten at the next publish, or as soon
as :attr:`Broadcaster.subscribers` is read, whichever comes first.
"""

from __future__ import annotations

import logging
import math
from typing import Generic, TypeVar

import trio

from ._failures import Panic, TaskFailure, describe_reason
from ._validate import shown

__all__ = ["Broadcaster", "publish_or_log"]

T = TypeVar("T")


class Broadcaster(Generic[T]):
    __slots__ = ("_closed", "_senders", "dropped")

    def __init__(self) -> None:
        self._senders: list[trio.MemorySendChannel[T]] = []
        self._closed = False
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        """Open subscriptions: a closed receive channel no longer counts."""
        if any(not send.statistics().open_receive_channels for send in self._senders):
            self._forget_closed()
        return len(self._senders)

    def subscribe(self, max_buffer_size: int | float = 64) -> trio.MemoryReceiveChannel[T]:
        # Trio's own rule for memory channels: an int or math.inf.
        if not (
            (isinstance(max_buffer_size, int) and not isinstance(max_buffer_size, bool))
            or max_buffer_size == math.inf
        ):
            raise TypeError(
                f"max_buffer_size must be an int >= 0 or math.inf, not {shown(max_buffer_size)}"
            )
        if max_buffer_size < 0:
            raise ValueError(
                f"max_buffer_size must be an int >= 0 or math.inf, not {shown(max_buffer_size)}"
            )
        send, receive = trio.open_memory_channel[T](max_buffer_size)
        if self._closed:
            # A late subscriber sees an ended stream, as every other one does.
            send.close()
        else:
            self._senders.append(send)
        return receive

    def publish(self, value: T) -> int:
        """Offer ``value`` to every subscriber; return how many are still open.

        A full buffer counts (the value was dropped for it); a closed one does
        not, so 0 means nobody is listening any more.
        """
        gone = 0
        for send in self._senders:
            try:
                send.send_nowait(value)
            except trio.WouldBlock:
                self.dropped += 1
            except trio.BrokenResourceError:
                gone += 1
        if gone:
            self._forget_closed()
        return len(self._senders)

    def _forget_closed(self) -> None:
        alive: list[trio.MemorySendChannel[T]] = []
        for send in self._senders:
            if send.statistics().open_receive_channels:
                alive.append(send)
            else:
                send.close()
        self._senders = alive

    def close(self) -> None:
        """End every subscription: each subscriber's ``async for`` finishes."""
        self._closed = True
        for send in self._senders:
            send.close()
        self._senders = []


def publish_or_log(
    broadcaster: Broadcaster[TaskFailure], failure: TaskFailure, logger: logging.Logger
) -> None:
    """Publish ``failure``; with nobody listening, log it at ERROR instead.

    A failure with no subscriber (or only closed ones) must not vanish
    silently: it goes to ``logger``, with the traceback of a :class:`Panic`.
    """
    if broadcaster.publish(failure):
        return
    logger.error(
        "task %r (id %d) failed with no subscriber: %s",
        failure.task.name,
        failure.task.id,
        describe_reason(failure.reason),
        exc_info=failure.reason.exception if isinstance(failure.reason, Panic) else None,
    )
