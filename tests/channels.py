"""Test helper shared by the component suites."""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


def drain_nowait(channel: trio.MemoryReceiveChannel[T]) -> list[T]:
    """Everything ``channel`` holds right now, without waiting."""
    got: list[T] = []
    while True:
        try:
            got.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return got
