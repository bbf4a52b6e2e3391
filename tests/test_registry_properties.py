"""Property tests of TaskRegistry.join_all against a timing model.

Each example draws tasks (spawned at once or later, while join_all waits),
each of which ignores the shutdown token, watches it, or fails; a time at
which the token is set (or never); and a deadline. Times are chosen so that
no two events coincide: task ends fall on whole or quarter seconds, late
spawns on three-quarters, the deadline on halves. The model then says which
tasks are still running at the deadline: exactly those must be cancelled and
counted in ``pending``, and nothing may be left afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_monitor as tm


@dataclass(frozen=True)
class Plan:
    mode: str  # "ignores", "watches" or "fails"
    spawn_at: float  # 0, or j + 0.75 (spawned later, while join_all waits)
    duration: int  # runs this long on its own
    grace: int  # "watches": stops this long after seeing the token


plans = st.builds(
    Plan,
    mode=st.sampled_from(["ignores", "watches", "fails"]),
    spawn_at=st.one_of(st.just(0.0), st.integers(0, 4).map(lambda j: j + 0.75)),
    duration=st.integers(0, 8),
    grace=st.integers(0, 3),
)


def end_time(plan: Plan, token_at: float | None) -> float:
    natural = plan.spawn_at + plan.duration
    if plan.mode == "watches" and token_at is not None:
        return min(natural, max(plan.spawn_at, token_at) + plan.grace)
    return natural


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(max_examples=150, deadline=None)
@given(
    tasks=st.lists(plans, max_size=12),
    token_at=st.one_of(st.none(), st.integers(0, 6).map(lambda j: j + 0.25)),
    deadline=st.integers(0, 10).map(lambda j: j + 0.5),
)
def test_join_all_cancels_exactly_the_tasks_running_at_the_deadline(
    tasks: list[Plan], token_at: float | None, deadline: float
) -> None:
    early = [p for p in tasks if p.spawn_at == 0]
    late = sorted((p for p in tasks if p.spawn_at > 0), key=lambda p: p.spawn_at)

    # The model. A spawner task (itself registered, ignoring the token) spawns
    # the late tasks and returns after the last one, so the registry is never
    # empty before then; spawns after the deadline never happen, because the
    # spawner is cancelled at the deadline.
    spawned = early + [p for p in late if p.spawn_at < deadline]
    ends = [end_time(p, token_at) for p in spawned]
    if late:
        ends.append(late[-1].spawn_at)
    expected_pending = sum(end > deadline for end in ends)
    expected_failures = sum(
        p.mode == "fails" and end < deadline for p, end in zip(spawned, ends, strict=False)
    )
    expected_end = deadline if expected_pending else max(ends, default=0.0)

    handler = Collect()
    logger = logging.getLogger("trio_monitor.registry")
    logger.addHandler(handler)

    async def task(plan: Plan, token: tm.ShutdownToken) -> None:
        if plan.mode == "watches":
            with trio.move_on_after(plan.duration):
                await token.wait()
                await trio.sleep(plan.grace)
            return
        await trio.sleep(plan.duration)
        if plan.mode == "fails":
            raise ValueError("planned failure")

    async def main() -> None:
        async with tm.open_registry(shutdown_deadline=0) as registry:
            token = registry.shutdown_token
            handles = [
                registry.spawn(f"early-{i}", tm.TaskKind.RPC_HANDLER, task, p, token)
                for i, p in enumerate(early)
            ]

            async def spawner() -> None:
                for i, plan in enumerate(late):
                    await trio.sleep_until(plan.spawn_at)
                    handles.append(
                        registry.spawn(f"late-{i}", tm.TaskKind.PEER_CONNECTION, task, plan, token)
                    )

            if late:
                handles.append(registry.spawn("spawner", tm.TaskKind.MAINTENANCE, spawner))

            async def set_token() -> None:
                assert token_at is not None
                await trio.sleep_until(token_at)
                token.set()

            async with trio.open_nursery() as nursery:
                if token_at is not None:
                    nursery.start_soon(set_token)
                if expected_pending:
                    with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
                        await registry.join_all(deadline)
                    assert info.value.pending == expected_pending
                    assert info.value.deadline == deadline
                else:
                    await registry.join_all(deadline)
                assert trio.current_time() == pytest.approx(expected_end)
                assert len(registry) == 0
                assert registry.is_empty()
                assert registry.snapshot() == []
                assert all(h.is_finished() for h in handles)
                assert len(handles) == len(spawned) + (1 if late else 0)
                nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.removeHandler(handler)
    # Failures before the deadline are logged; cancelled tasks are not.
    assert len(handler.records) == expected_failures
