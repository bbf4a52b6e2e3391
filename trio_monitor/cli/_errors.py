"""The command's errors, one line each, with the exit code they mean.

Exit codes are part of the command's contract (deploy scripts gate on them):
0 done, 1 not found or failed, 2 usage error or bad storage URL. Click itself
exits 2 on usage errors (unknown options, missing arguments).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import click
import trio

__all__ = ["BadUsage", "Failed", "run_async"]

T = TypeVar("T")


class Failed(click.ClickException):
    """Something was not found or an action failed: exit status 1."""

    exit_code = 1


class BadUsage(click.ClickException):
    """A bad argument, option or storage URL: exit status 2.

    Unlike :class:`click.UsageError` it prints one line, without the usage
    text: the message names what to change.
    """

    exit_code = 2


def _only_leaf(error: BaseException) -> BaseException:
    leaf: BaseException = error
    while isinstance(leaf, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", leaf)
        if len(group.exceptions) != 1:
            return group
        leaf = group.exceptions[0]
    return leaf


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)``, with a command error raised inside a nursery unwrapped.

    A :class:`click.ClickException` that reaches a nursery comes out wrapped
    in an exception group; the command must still print its one line and
    exit with its code.
    """
    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        leaf = _only_leaf(group)
        if isinstance(leaf, click.ClickException):
            raise leaf from None
        raise
