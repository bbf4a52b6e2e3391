"""Callers cancelled at random points: the cancellation-isolation properties' shared part.

A property draws :func:`callers` (each one a kind of call and, maybe, how
many checkpoints after its start it is cancelled), and :func:`run_callers`
starts them all at once. The runner checks the promise itself: a caller that
is not cancelled never sees :class:`trio.Cancelled` and finishes. What each
property checks after (what was stored) is its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence

import trio
import trio.testing
from hypothesis import strategies as st

__all__ = ["Caller", "callers", "run_callers"]

#: ``(kind of call, cancelled after this many checkpoints, or None: never)``.
Caller = tuple[str, int | None]


def callers(kinds: Sequence[str], *, max_size: int = 10) -> st.SearchStrategy[list[Caller]]:
    """Lists of callers of ``kinds``, some of them cancelled after 0-4 checkpoints."""
    return st.lists(
        st.tuples(st.sampled_from(kinds), st.one_of(st.none(), st.integers(0, 4))),
        min_size=1,
        max_size=max_size,
    )


async def run_callers(
    drawn: Sequence[Caller],
    call: Callable[[int, str], Awaitable[object]],
    *,
    then: Callable[[], object] | None = None,
    never_return: Collection[str] = (),
) -> dict[int, object]:
    """Run ``call(i, kind)`` for every caller at once; return what each returned.

    ``then()`` runs once every caller has started and blocked (to release
    something they queue behind). Kinds in ``never_return`` (a wait with no
    end) are always cancelled.
    """
    returned: dict[int, object] = {}

    async def caller(i: int, kind: str, cancel_after: int | None) -> None:
        with trio.CancelScope() as scope:
            if cancel_after is not None:
                nursery.start_soon(cancel_later, scope, cancel_after)
            try:
                returned[i] = await call(i, kind)
            except trio.Cancelled:
                assert cancel_after is not None, f"caller {i} ({kind}) got a Cancelled"
                raise
        assert cancel_after is not None or i in returned, f"caller {i} ({kind}) did not finish"

    async def cancel_later(scope: trio.CancelScope, checkpoints: int) -> None:
        for _ in range(checkpoints):
            await trio.lowlevel.checkpoint()
        scope.cancel()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i, (kind, cancel_after) in enumerate(drawn):
                if kind in never_return and cancel_after is None:
                    cancel_after = 2
                nursery.start_soon(caller, i, kind, cancel_after)
            if then is not None:
                await trio.testing.wait_all_tasks_blocked()
                then()
    return returned
