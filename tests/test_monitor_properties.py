"""Property-based tests of the task monitor against a reference model.

Hypothesis generates a program: a list of steps (spawn a task of some kind
and behaviour, abort one in some way, let the clock run, subscribe), and a
way to end the monitor. The program runs inside one ``trio.run`` on an
autojumping mock clock; after every clock advance and at the end, what each
subscriber received is compared with what the model says.

The model: a task is reported iff it finished on its own (returned or raised)
before any abort of it and before the monitor's end, and its outcome is a
failure for its kind. Aborted tasks and tasks stopped by the monitor's end
are never reported. Timing is chosen so that nothing ties: the driver acts at
whole seconds, tasks finish half-way between them (a task with no delay
finishes at the driver's next checkpoint, unless it was aborted before).
"""

from __future__ import annotations

import gc
import math
from collections import Counter
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_monitor as tm

KINDS = ("infinite", "finite", "fallible")
BEHAVIOURS = ("return", "raise_listed", "raise_unlisted", "forever", "raise_in_finally", "swallow")
FINISHING = ("return", "raise_listed", "raise_unlisted")


class Listed(Exception):
    pass


@attrs.frozen
class Spawn:
    kind: str
    behaviour: str
    delay: int


@attrs.frozen
class Abort:
    index: int
    how: str  # "abort", "with", "drop"


@attrs.frozen
class Advance:
    seconds: int


@attrs.frozen
class Subscribe:
    pass


Step = Spawn | Abort | Advance | Subscribe

steps_strategy = st.lists(
    st.one_of(
        st.builds(Spawn, st.sampled_from(KINDS), st.sampled_from(BEHAVIOURS), st.integers(0, 3)),
        st.builds(Abort, st.integers(0, 50), st.sampled_from(["abort", "with", "drop"])),
        st.builds(Advance, st.integers(1, 3)),
        st.just(Subscribe()),
    ),
    max_size=30,
)


def expected_reason(kind: str, behaviour: str) -> str | None:
    """The model's classification of a task that finished on its own."""
    if behaviour == "return":
        return "EarlyTermination" if kind == "infinite" else None
    if behaviour == "raise_listed" and kind == "fallible":
        return "Error"
    return "Panic"


def describe(failure: tm.TaskFailure) -> tuple[int, str, str | None]:
    reason = failure.reason
    if isinstance(reason, tm.Panic):
        return (failure.task.id, "Panic", reason.message)
    if isinstance(reason, tm.Error):
        return (failure.task.id, "Error", reason.error)
    return (failure.task.id, "EarlyTermination", None)


def make_body(behaviour: str, delay: int, index: int) -> Any:
    message = f"task {index}"

    async def body() -> None:
        if behaviour in FINISHING:
            if delay:
                await trio.sleep(delay - 0.5)
            if behaviour == "raise_listed":
                raise Listed(message)
            if behaviour == "raise_unlisted":
                raise ValueError(message)
            return
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            if behaviour == "swallow":
                return
            raise
        finally:
            if behaviour == "raise_in_finally":
                raise ValueError("raised while being cancelled")

    return body


@attrs.define
class ModelTask:
    kind: str
    behaviour: str
    finishes_at: float | None  # None: runs until it is stopped
    stopped_at: float = math.inf
    id: int = 0
    id_index: int = 0

    def report(self) -> tuple[int, str, str | None] | None:
        if self.finishes_at is None or self.finishes_at > self.stopped_at:
            return None
        reason = expected_reason(self.kind, self.behaviour)
        if reason is None:
            return None
        message = None if reason == "EarlyTermination" else f"task {self.id_index}"
        return (self.id, reason, message)


def run_program(
    steps: list[Step], ending: str, small_buffer: int | None
) -> list[tuple[int, str, str | None]]:
    """Run ``steps``, check every subscriber against the model, return the reports."""
    model: list[ModelTask] = []
    received: list[list[tuple[int, str, str | None]]] = []
    subscribed_at: list[float] = []
    handles: list[tm.TaskHandle | None] = []

    def expected_between(start: float, end: float) -> Counter[tuple[int, str, str | None]]:
        got: Counter[tuple[int, str, str | None]] = Counter()
        for task in model:
            report = task.report()
            assert task.finishes_at is not None or report is None
            if report is not None and start < task.finishes_at <= end:  # type: ignore[operator]
                got[report] += 1
        return got

    async def main() -> None:
        channels: list[trio.MemoryReceiveChannel[tm.TaskFailure]] = []
        small: trio.MemoryReceiveChannel[tm.TaskFailure] | None = None
        last_check = -1.0

        def drain_and_check(now: float) -> None:
            nonlocal last_check
            for channel, got in zip(channels, received, strict=True):
                while True:
                    try:
                        got.append(describe(channel.receive_nowait()))
                    except trio.WouldBlock:
                        break
            for got, since in zip(received, subscribed_at, strict=True):
                window = [r for r in got if r not in seen_before[id(got)]]
                assert Counter(window) == expected_between(max(last_check, since), now)
                seen_before[id(got)].update(window)
            last_check = now

        seen_before: dict[int, set[tuple[int, str, str | None]]] = {}

        def subscribe(monitor: tm.TaskMonitor) -> None:
            channels.append(monitor.subscribe(math.inf))
            got: list[tuple[int, str, str | None]] = []
            received.append(got)
            seen_before[id(got)] = set()
            subscribed_at.append(trio.current_time())

        body_error: BaseException | None = None
        with trio.CancelScope() as outer:
            try:
                async with tm.open_monitor() as monitor:
                    subscribe(monitor)
                    if small_buffer is not None:
                        small = monitor.subscribe(small_buffer)
                    for step in steps:
                        now = trio.current_time()
                        if isinstance(step, Spawn):
                            index = len(model)
                            body = make_body(step.behaviour, step.delay, index)
                            spawn = getattr(monitor, f"spawn_{step.kind}")
                            if step.kind == "fallible":
                                handle = spawn(f"t{index}", body, errors=(Listed,))
                            else:
                                handle = spawn(f"t{index}", body)
                            handles.append(handle.abort_on_drop())
                            if step.behaviour in FINISHING:
                                # No delay: done at the driver's next checkpoint.
                                finishes_at = now + (step.delay - 0.5 if step.delay else 0.25)
                            else:
                                finishes_at = None
                            model.append(
                                ModelTask(
                                    step.kind,
                                    step.behaviour,
                                    finishes_at,
                                    id=handle.info.id,
                                    id_index=index,
                                )
                            )
                            del handle
                        elif isinstance(step, Abort):
                            if not model:
                                continue
                            index = step.index % len(model)
                            task = model[index]
                            task.stopped_at = min(task.stopped_at, now)
                            target = handles[index]
                            if target is None:
                                continue  # already dropped
                            if step.how == "abort":
                                target.abort()
                            elif step.how == "with":
                                with target:
                                    pass
                            else:
                                del target
                                handles[index] = None
                                gc.collect()
                        elif isinstance(step, Advance):
                            await trio.sleep(step.seconds)
                            drain_and_check(trio.current_time())
                        else:
                            subscribe(monitor)
                    end = trio.current_time()
                    for task in model:
                        task.stopped_at = min(task.stopped_at, end)
                    if ending == "raise":
                        raise LookupError("body ends with an error")
                    if ending == "outer":
                        outer.cancel()
                        await trio.sleep_forever()
            except LookupError as exc:
                body_error = exc
        assert outer.cancelled_caught == (ending == "outer")
        if ending == "raise":
            assert type(body_error) is LookupError
            assert str(body_error) == "body ends with an error"
        else:
            assert body_error is None

        # Every subscription has ended: async for finishes.
        for channel, got in zip(channels, received, strict=True):
            got.extend([describe(f) async for f in channel])
        total = expected_between(-1, math.inf)
        assert Counter(received[0]) == total
        for got, since in zip(received, subscribed_at, strict=True):
            assert Counter(got) == expected_between(since, math.inf)
            # Every subscriber sees the same order: a late one, a suffix.
            assert got == received[0][len(received[0]) - len(got) :]
        if small is not None:
            assert small_buffer is not None
            kept = [describe(f) async for f in small]
            assert kept == received[0][:small_buffer]
            dropped = len(received[0]) - len(kept)
            assert monitor.statistics().dropped_failures == dropped
        else:
            assert monitor.statistics().dropped_failures == 0
        # Nothing aborted is ever reported.
        stopped = {t.id for t in model if t.finishes_at is None or t.finishes_at > t.stopped_at}
        assert not stopped & {r[0] for r in received[0]}
        assert monitor.active_tasks() == []
        assert monitor.statistics().active_tasks == 0
        assert all(h.is_finished() for h in handles if h is not None)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return received[0]


@settings(max_examples=200, deadline=None)
@given(
    steps=steps_strategy,
    ending=st.sampled_from(["end", "raise", "outer"]),
    small_buffer=st.none() | st.integers(0, 3),
)
def test_reports_match_the_model(steps: list[Step], ending: str, small_buffer: int | None) -> None:
    run_program(steps, ending, small_buffer)


def test_a_known_program() -> None:
    # The interpreter itself, on a hand-written program with a known outcome.
    steps: list[Step] = [
        Spawn("infinite", "return", 2),  # reported at 1.5
        Spawn("finite", "raise_unlisted", 3),  # aborted at 1, never reported
        Spawn("fallible", "raise_listed", 1),  # reported at 0.5
        Spawn("infinite", "swallow", 0),  # aborted before it ran
        Abort(3, "drop"),
        Advance(1),
        Abort(1, "with"),
        Advance(3),
    ]
    reports = run_program(steps, "end", 1)
    assert [(reason, message) for _, reason, message in reports] == [
        ("Error", "task 2"),
        ("EarlyTermination", None),
    ]
