"""Tests of the supervision core shared by every component.

``capture``, ``FailurePolicy``, ``SupervisedNursery`` (spawn, abort, join,
wait_idle, close) and ``open_component`` (graceful stop, what propagates).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile import UnprintableError, raise_unprintable, respawning
from trio_monitor import EarlyTermination, Error, Panic, TaskFailure, TaskInfo
from trio_monitor._core import (
    FINITE,
    INFINITE,
    FailurePolicy,
    SupervisedNursery,
    TaskState,
    callable_name,
    capture,
    coroutine_or_error,
    deferred_call,
    is_async_function,
    is_outer_cancelled,
    open_component,
)
from trio_monitor._failures import Hung, describe_exception, describe_reason


async def nothing() -> None:
    pass


async def fail(message: str) -> None:
    raise ValueError(message)


# --- capture -----------------------------------------------------------------


async def test_capture_success_and_exception() -> None:
    assert await capture(nothing, ()) is None
    exc = await capture(fail, ("boom",))
    assert isinstance(exc, ValueError)
    assert str(exc) == "boom"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_capture_lets_base_exceptions_through(exc_type: type[BaseException]) -> None:
    async def raises() -> None:
        raise exc_type

    with pytest.raises(exc_type):
        await capture(raises, ())


async def test_capture_lets_cancellation_through(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(1) as scope:
        await capture(trio.sleep_forever, ())
    assert scope.cancelled_caught


async def test_capture_returns_an_exception_group() -> None:
    async def group() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, "a")
            nursery.start_soon(fail, "b")

    exc = await capture(group, ())
    assert isinstance(exc, ExceptionGroup)
    assert sorted(str(e) for e in exc.exceptions) == ["a", "b"]


async def test_capture_splits_a_mixed_group() -> None:
    async def mixed() -> None:
        raise BaseExceptionGroup("mixed", [ValueError("x"), KeyboardInterrupt()])

    with pytest.raises(BaseExceptionGroup) as info:
        await capture(mixed, ())
    leaves = info.value.exceptions
    assert len(leaves) == 1
    assert isinstance(leaves[0], KeyboardInterrupt)


# --- classification ----------------------------------------------------------


class Listed(Exception):
    pass


def test_classify() -> None:
    fallible = FailurePolicy(runs_forever=False, errors=(Listed,))
    assert FINITE.classify(True, None) is None
    assert fallible.classify(True, None) is None
    assert isinstance(INFINITE.classify(True, None), EarlyTermination)
    assert INFINITE.classify(False, None) is None  # aborted before it started
    panic = FINITE.classify(False, ValueError("v"))
    assert isinstance(panic, Panic)
    assert panic.message == "v"
    assert isinstance(INFINITE.classify(False, Listed("l")), Panic)
    error = fallible.classify(False, Listed("l"))
    assert isinstance(error, Error)
    assert error.error == "l"
    assert isinstance(fallible.classify(False, KeyError("k")), Panic)


async def test_is_outer_cancelled() -> None:
    assert not is_outer_cancelled()
    with trio.CancelScope() as scope:  # noqa: ASYNC100 - no checkpoint on purpose
        scope.cancel()
        assert is_outer_cancelled()
        with trio.CancelScope(shield=True):  # noqa: ASYNC100
            assert not is_outer_cancelled()
    assert not is_outer_cancelled()


# --- SupervisedNursery --------------------------------------------------------------


async def test_supervisor_reports_synchronously_and_forgets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[TaskFailure] = []
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        state = supervisor.spawn("f", fail, ("x",), FINITE)
        assert list(supervisor.tasks) == [state.id]
        await state.wait()
        assert state.done
        assert supervisor.tasks == {}
        assert [r.task for r in reports] == [state.info]
        supervisor.close()
    with pytest.raises(RuntimeError, match="closed"):
        supervisor.spawn("late", nothing, (), FINITE)


async def test_a_task_failed_or_aborted_before_its_first_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A task's cancel scope is made when it starts: a verdict or an abort
    # given before that still holds. Failed: it starts cancelled, and the
    # verdict is reported whatever the body makes of it. Aborted: the body
    # never runs, and nothing is reported.
    reports: list[TaskFailure] = []
    steps: list[str] = []

    async def body(name: str) -> None:
        steps.append(name)
        await trio.sleep(1)
        steps.append(name + " woke")  # pragma: no cover - cancelled first

    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        failed = supervisor.spawn("failed", body, ("failed",), FINITE)
        aborted = supervisor.spawn("aborted", body, ("aborted",), FINITE)
        assert failed.scope is None
        failed.fail(Hung(5.0))
        aborted.abort()
        await supervisor.wait_idle()
        supervisor.close()
    assert steps == ["failed"]
    assert [(r.task, r.reason) for r in reports] == [(failed.info, Hung(5.0))]


async def test_on_failure_sees_the_state_before_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[tuple[str, object]] = []
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(
            nursery,
            lambda f: calls.append(("report", f.task.name)),
            lambda state, f: calls.append(("hook", state.meta)),
        )
        await supervisor.spawn("f", fail, ("x",), FINITE, meta="meta").wait()
        await supervisor.spawn("ok", nothing, (), FINITE, meta="ok").wait()
        supervisor.close()
    assert calls == [("hook", "meta"), ("report", "f")]


async def test_join_waits_then_aborts_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    reports: list[TaskFailure] = []
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        quick = supervisor.spawn("quick", trio.sleep, (1,), FINITE)
        slow = [supervisor.spawn(f"slow{i}", trio.sleep_forever, (), INFINITE) for i in range(3)]
        start = trio.current_time()
        assert await supervisor.join(5) == 3
        assert trio.current_time() - start == pytest.approx(5)
        assert quick.done
        assert not quick.aborted
        assert all(s.done and s.aborted for s in slow)
        assert supervisor.tasks == {}
        supervisor.close()
    assert reports == []


async def test_join_returns_early_when_idle(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, lambda f: None)
        supervisor.spawn("a", trio.sleep, (2,), FINITE)
        start = trio.current_time()
        assert await supervisor.join(10) == 0
        assert trio.current_time() - start == pytest.approx(2)
        supervisor.close()


async def test_wait_idle_includes_tasks_spawned_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, lambda f: None)

        async def spawns_another() -> None:
            await trio.sleep(1)
            supervisor.spawn("second", trio.sleep, (3,), FINITE)

        supervisor.spawn("first", spawns_another, (), FINITE)
        await supervisor.wait_idle()
        assert trio.current_time() == pytest.approx(4)
        assert supervisor.tasks == {}
        supervisor.close()


async def test_close_stops_everything_without_reports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[TaskFailure] = []

    async def fails_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("while closing")

    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        states = [supervisor.spawn(f"t{i}", fails_when_cancelled, (), INFINITE) for i in range(3)]
        await trio.sleep(1)
        supervisor.close()
        assert supervisor.closing
    assert all(s.done for s in states)
    assert reports == []


# --- open_component ----------------------------------------------------------


class Component:
    def __init__(self, supervisor: SupervisedNursery) -> None:
        self.supervisor = supervisor
        self.events: list[str] = []

    async def method(self) -> None:
        pass


async def test_graceful_stop_then_on_close(autojump_clock: trio.testing.MockClock) -> None:
    events: list[str] = []

    async def graceful_stop(component: Component) -> None:
        events.append("stop")
        assert not component.supervisor.closing
        await component.supervisor.join(1)

    async with open_component(
        Component,
        lambda f: None,
        graceful_stop=graceful_stop,
        on_close=lambda c: events.append("close"),
    ) as component:
        state = component.supervisor.spawn("t", trio.sleep, (0.5,), FINITE)
    assert events == ["stop", "close"]
    assert state.done
    assert not state.aborted


async def test_graceful_stop_runs_when_the_body_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []

    async def graceful_stop(component: Component) -> None:
        events.append("stop")

    with pytest.raises(KeyError):
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            raise KeyError("body")
    assert events == ["stop"]


async def test_outer_cancellation_skips_the_graceful_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []

    async def graceful_stop(component: Component) -> None:
        events.append("stop")
        await trio.sleep(100)

    with trio.move_on_after(1) as outer:
        async with open_component(
            Component,
            lambda f: None,
            graceful_stop=graceful_stop,
            on_close=lambda c: events.append("close"),
        ):
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert events == ["close"]
    assert trio.current_time() == pytest.approx(1)


async def test_stop_error_is_raised_bare_when_the_body_succeeded() -> None:
    async def graceful_stop(component: Component) -> None:
        raise TimeoutError("drain took too long")

    with pytest.raises(TimeoutError, match="drain"):
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            pass


async def test_body_error_wins_over_the_stop_error() -> None:
    async def graceful_stop(component: Component) -> None:
        raise TimeoutError("drain took too long")

    with pytest.raises(KeyError):
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            raise KeyError("body")


async def test_cancellation_during_the_stop_wins_over_the_body_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def graceful_stop(component: Component) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1) as outer:
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            raise KeyError("body")
    # The Cancelled propagated (and was caught by its scope), not the KeyError.
    assert outer.cancelled_caught


async def test_task_base_exception_wins_over_the_body_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def interrupt() -> None:
        await trio.sleep(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:  # noqa: PT012 - the block is the subject
        async with open_component(Component, lambda f: None) as component:
            component.supervisor.spawn("ki", interrupt, (), FINITE)
            try:
                await trio.sleep_forever()
            finally:
                raise KeyError("body")
    assert type(info.value) is KeyboardInterrupt


# --- describing failures (issue 8: describing a failure never fails) ---------


def test_describe_exception_falls_back_to_the_type_name() -> None:
    assert describe_exception(ValueError("boom")) == "boom"
    assert describe_exception(ValueError()) == ""
    assert describe_exception(UnprintableError()) == "<unprintable UnprintableError>"


def test_describe_exception_lets_base_exceptions_through() -> None:
    class Interrupting(Exception):
        def __str__(self) -> str:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        describe_exception(Interrupting())


def test_reports_of_unprintable_exceptions_are_built_and_printable() -> None:
    exc = UnprintableError()
    panic = Panic.from_exception(exc)
    assert panic.message == "<unprintable UnprintableError>"
    assert panic.traceback is not None
    assert "UnprintableError" in panic.traceback
    assert panic.exception is exc
    error = Error.from_exception(exc)
    assert error.error == "<unprintable UnprintableError>"
    # Their reprs show the exception without calling its broken __repr__.
    assert "UnprintableError" in repr(panic)
    assert "UnprintableError" in repr(error)
    assert "UnprintableError" in repr(TaskFailure(TaskInfo(1, "t"), panic))
    assert describe_reason(panic) == "UnprintableError: <unprintable UnprintableError>"
    assert describe_reason(error) == "error UnprintableError: <unprintable UnprintableError>"
    assert describe_reason(EarlyTermination()) == "returned early"


def test_classify_never_fails_on_an_unprintable_exception() -> None:
    fallible = FailurePolicy(runs_forever=False, errors=(UnprintableError,))
    error = fallible.classify(False, UnprintableError())
    assert isinstance(error, Error)
    assert error.error == "<unprintable UnprintableError>"
    panic = FINITE.classify(False, UnprintableError())
    assert isinstance(panic, Panic)
    assert panic.message == "<unprintable UnprintableError>"


def test_a_panic_has_no_traceback_only_if_formatting_it_fails() -> None:
    exc = ValueError("v")
    exc.__notes__ = BrokenNotes()  # type: ignore[assignment]
    panic = Panic.from_exception(exc)
    assert panic.message == "v"


class BrokenNotes(list[str]):
    def __iter__(self) -> Any:
        raise RuntimeError("notes are broken")

    def __len__(self) -> int:
        raise RuntimeError("notes are broken")


@given(
    st.sampled_from(["str", "repr", "both", "neither"]),
    st.sampled_from([RuntimeError, ValueError, RecursionError, TypeError]),
    st.booleans(),
)
def test_describing_any_exception_never_raises(
    broken: str, raised: type[Exception], listed: bool
) -> None:
    # The class: whatever __str__/__repr__ raise (an Exception), every way
    # the core turns an exception into text works and names the type.
    def fail(self: object) -> str:
        raise raised("broken")

    namespace: dict[str, Any] = {}
    if broken in ("str", "both"):
        namespace["__str__"] = fail
    if broken in ("repr", "both"):
        namespace["__repr__"] = fail
    cls = type("Hostile", (Exception,), namespace)
    exc = cls("text")
    text = describe_exception(exc)
    assert text == ("<unprintable Hostile>" if broken in ("str", "both") else "text")
    policy = FailurePolicy(runs_forever=False, errors=(cls,) if listed else ())
    reason = policy.classify(False, exc)
    assert reason is not None
    assert "Hostile" in describe_reason(reason)
    assert "Hostile" in repr(TaskFailure(TaskInfo(1, "t"), reason))


async def test_an_unprintable_failure_is_reported_and_siblings_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[TaskFailure] = []

    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        sibling = supervisor.spawn("sibling", trio.sleep, (10,), FINITE)
        await supervisor.spawn("bad", raise_unprintable, (), FINITE).wait()
        await sibling.wait()
        assert not sibling.aborted
        supervisor.close()
    [failure] = reports
    assert isinstance(failure.reason, Panic)
    assert failure.reason.message == "<unprintable UnprintableError>"
    assert trio.current_time() == pytest.approx(10)


async def test_a_failing_report_hook_is_logged_and_the_supervisor_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_report(failure: TaskFailure) -> None:
        raise RuntimeError("bug in a component's report")

    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, broken_report)
        sibling = supervisor.spawn("sibling", trio.sleep, (5,), FINITE)
        await supervisor.spawn("f", fail, ("x",), FINITE).wait()
        await sibling.wait()
        supervisor.close()
    [record] = [r for r in caplog.records if r.name == "trio_monitor"]
    assert record.levelno == logging.ERROR
    assert "'f'" in record.getMessage()


# --- spawning checks its callable (issue 8: non-async callables) --------------


def sync_function() -> None:
    pass


async def async_generator() -> AsyncIterator[int]:
    yield 1


class AsyncCallable:
    async def __call__(self, value: int) -> int:
        return value


def returns_a_future() -> object:
    class Future:
        pass

    return Future()


def test_coroutine_or_error_accepts_every_kind_of_async_function() -> None:
    for fn, args in [
        (nothing, ()),
        (functools.partial(fail, "x"), ()),
        (AsyncCallable(), (1,)),
        (lambda: nothing(), ()),
    ]:
        coro = coroutine_or_error(fn, args)
        assert inspect.iscoroutine(coro)
        coro.close()


def test_coroutine_or_error_refuses_a_coroutine_object_and_closes_it() -> None:
    coro = nothing()
    with pytest.raises(TypeError, match=r"coroutine object nothing\(\.\.\.\)") as info:
        coro_or_error_no_warning(coro)
    assert "spawn(..., nothing, ...)" in str(info.value)
    # Closed: no "never awaited" warning later.
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def coro_or_error_no_warning(fn: object) -> None:
    coroutine_or_error(fn, ())


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (sync_function, "sync_function is synchronous"),
        (async_generator, "async generator function"),
        (returns_a_future, "asyncio or another library"),
        (None, "expected an async function, not a NoneType object"),
        (42, "not a int object"),
    ],
)
def test_coroutine_or_error_names_the_mistake(fn: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        coroutine_or_error(fn, ())


def test_coroutine_or_error_lets_the_calls_own_error_through() -> None:
    with pytest.raises(TypeError, match="positional argument"):
        coroutine_or_error(fail, ())  # missing argument: Python's own message


def test_is_async_function_needs_no_call() -> None:
    assert is_async_function(nothing)
    assert is_async_function(functools.partial(fail, "x"))
    assert is_async_function(Component.method)
    assert not is_async_function(sync_function)
    assert not is_async_function(async_generator)
    assert not is_async_function(AsyncCallable())  # valid, but only a call tells
    coro = nothing()
    assert not is_async_function(coro)
    coro.close()


def _async_def(positional: int, defaults: int, varargs: bool, kwonly: int, kwdefaults: int) -> Any:
    """An ``async def`` function with the given parameter shape."""
    params = [f"p{i}" + ("=0" if i >= positional - defaults else "") for i in range(positional)]
    if varargs:
        params.append("*rest")
    elif kwonly:
        params.append("*")
    params += [f"k{i}" + ("=0" if i < kwdefaults else "") for i in range(kwonly)]
    namespace: dict[str, Any] = {}
    exec(f"async def fn({', '.join(params)}):\n    pass", namespace)
    return namespace["fn"]


@given(
    shape=st.tuples(st.integers(0, 4), st.integers(0, 4), st.booleans())
    .flatmap(
        lambda t: st.tuples(
            st.just(t[0]), st.integers(0, t[0]), st.just(t[2]), st.integers(0, 3), st.integers(0, 3)
        )
    )
    .filter(lambda t: t[4] <= t[3]),
    given_args=st.integers(0, 6),
)
def test_deferred_call_exactly_when_the_arguments_bind(
    shape: tuple[int, int, bool, int, int], given_args: int
) -> None:
    # A deferred call must never fail later: deferred_call says yes exactly
    # when the interpreter binds the arguments.
    fn = _async_def(*shape)
    args = tuple(range(given_args))
    try:
        fn(*args).close()
    except TypeError:
        binds = False
    else:
        binds = True
    assert deferred_call(fn, args) is binds


def test_deferred_call_only_for_plain_async_functions() -> None:
    assert deferred_call(nothing, ())
    assert not deferred_call(functools.partial(nothing), ())  # a call tells, not the code
    assert not deferred_call(Component.method, ())  # self is missing
    assert not deferred_call(sync_function, ())
    assert not deferred_call(async_generator, ())
    assert not deferred_call(AsyncCallable(), ())


async def test_a_deferred_task_still_refuses_wrong_arguments_at_spawn() -> None:
    async with open_component(lambda supervisor: supervisor, lambda failure: None) as supervisor:
        with pytest.raises(TypeError, match="positional argument"):
            supervisor.spawn("wrong", fail, (), FINITE)
        assert not supervisor.tasks


def test_callable_name_never_raises() -> None:
    class HostileName:
        def __getattr__(self, name: str) -> object:
            raise ValueError(name)

        def __call__(self) -> None:
            pass

    assert callable_name(nothing) == "nothing"
    assert callable_name(functools.partial(functools.partial(fail, "x"))) == "fail"
    assert callable_name(AsyncCallable()) == "AsyncCallable"
    assert callable_name(HostileName()) == "HostileName"


@pytest.mark.parametrize("bad", [nothing, sync_function, async_generator, None])
async def test_spawn_refuses_a_non_async_callable_at_once(bad: Any) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, lambda f: None)
        target = bad() if bad is nothing else bad  # nothing(): a coroutine object
        with pytest.raises(TypeError, match="expected an async function"):
            supervisor.spawn("bad", target, (), FINITE)
        assert supervisor.tasks == {}
        supervisor.close()


# --- bounded stops: born-aborted spawns (issue 8: every stop is bounded) -------


async def test_join_is_bounded_when_a_straggler_respawns_itself(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    reports: list[TaskFailure] = []
    spawned: list[TaskState] = []
    ran = [0]

    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)

        def respawn() -> None:
            spawned.append(supervisor.spawn("reconnect", loop, (), INFINITE))

        async def loop() -> None:
            ran[0] += 1
            await respawning(respawn)()

        respawn()
        assert await supervisor.join(5) == 1
        assert trio.current_time() == pytest.approx(5)
        assert supervisor.tasks == {}
        # The first ran; its replacement was born aborted: done, never run.
        assert ran == [1]
        assert [s.done and s.aborted for s in spawned] == [True, True]
        assert not supervisor.stopping
        # After the join, spawning runs tasks again.
        await supervisor.spawn("later", trio.sleep, (1,), FINITE).wait()
        supervisor.close()
    assert reports == []
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_monitor"]
    first = spawned[0].id
    assert messages[0] == (
        f"task 'reconnect' (id {first}) still running at the 5s deadline: cancelling it"
    )
    assert "spawned while its component is stopping" in messages[1]
    assert len(messages) == 2


async def test_close_makes_spawns_born_aborted_then_refused_after_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ran: list[str] = []

    async def record(name: str) -> None:
        ran.append(name)

    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, lambda f: None)
        supervisor.close()
        late = supervisor.spawn("late", record, ("late",), FINITE)
        assert late.aborted
    assert late.done
    assert ran == []
    with pytest.raises(RuntimeError, match="closed"):
        supervisor.spawn("after exit", record, ("after exit",), FINITE)


@given(st.lists(st.sampled_from(["polite", "respawn", "respawn twice", "slow"]), max_size=6))
@settings(max_examples=50, deadline=None)
def test_join_always_ends_at_its_deadline(kinds: list[str]) -> None:
    # The class: whatever the tasks spawn from their finally, join returns
    # at its deadline (plus nothing) with exactly the stragglers counted.
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            supervisor = SupervisedNursery(nursery, lambda f: None)

            def spawner(times: int) -> Any:
                async def task() -> None:
                    try:
                        await trio.sleep_forever()
                    finally:
                        for _ in range(times):
                            supervisor.spawn("again", task, (), FINITE)

                return task

            respawns = {"polite": 0, "respawn": 1, "respawn twice": 2}
            for kind in kinds:
                if kind == "slow":
                    supervisor.spawn(kind, trio.sleep, (1,), FINITE)
                else:
                    supervisor.spawn(kind, spawner(respawns[kind]), (), FINITE)
            stragglers = sum(kind != "slow" for kind in kinds)
            start = trio.current_time()
            assert await supervisor.join(3) == stragglers
            elapsed = 3 if stragglers else 1 if kinds else 0
            assert trio.current_time() - start == elapsed
            assert supervisor.tasks == {}
            supervisor.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --- one rule for every spawn entry point -------------------------------------


class WithAsyncCall:
    async def __call__(self) -> None:
        pass


def sync_wrapper() -> Any:
    return nothing()  # a sync function returning a coroutine: valid, like in Trio


NOT_ASYNC: list[tuple[str, Any]] = [
    ("a coroutine object", lambda: nothing()),
    ("a sync function", lambda: sync_function),
    ("an async generator function", lambda: async_generator),
    ("None", lambda: None),
    ("a future-like object", returns_a_future),
]
ASYNC: list[tuple[str, Any]] = [
    ("an async function", lambda: nothing),
    ("a partial", lambda: functools.partial(nothing)),
    ("a bound async method", lambda: Component(None).method),  # type: ignore[arg-type]
    ("a callable object", WithAsyncCall),
    ("a sync wrapper returning a coroutine", lambda: sync_wrapper),
]


async def _entry_points(fn: Any) -> list[str]:
    """Spawn ``fn`` through every entry point; the ones that refused it."""
    import trio_monitor as tm

    refused: list[str] = []
    messages: list[str] = []

    async def attempt(name: str, spawn: Any) -> None:
        try:
            await spawn()
        except TypeError as exc:
            refused.append(name)
            messages.append(str(exc))

    async def sync(call: Any) -> None:
        call()

    async with (
        tm.open_monitor() as monitor,
        tm.open_registry() as registry,
        tm.open_runtime() as runtime,
    ):
        handle = runtime.handle()
        await attempt("spawn_infinite", lambda: sync(lambda: monitor.spawn_infinite("t", fn)))
        await attempt("spawn_finite", lambda: sync(lambda: monitor.spawn_finite("t", fn)))
        await attempt("spawn_fallible", lambda: sync(lambda: monitor.spawn_fallible("t", fn)))
        await attempt(
            "registry.spawn",
            lambda: sync(lambda: registry.spawn("t", tm.TaskKind.RPC_HANDLER, fn)),
        )
        await attempt("runtime spawn", lambda: sync(lambda: handle.spawn(fn)))
        await attempt("runtime spawn_wait", lambda: handle.spawn_wait(fn))
        await attempt(
            "runtime spawn_from_thread",
            lambda: trio.to_thread.run_sync(handle.spawn_from_thread, fn),
        )
        await attempt(
            "runtime spawn_wait_from_thread",
            lambda: trio.to_thread.run_sync(handle.spawn_wait_from_thread, fn),
        )
    assert all("async function" in message for message in messages), messages
    return refused


ENTRY_POINTS = 8


@given(st.sampled_from(NOT_ASYNC + ASYNC))
@settings(max_examples=20, deadline=None)
def test_every_spawn_entry_point_applies_the_same_rule(case: tuple[str, Any]) -> None:
    # The class: whatever is passed, every entry point of every component
    # decides the same way, at once, with a TypeError naming the mistake.
    description, make = case
    refused = trio.run(_entry_points, make())
    if (description, make) in NOT_ASYNC:
        assert len(refused) == ENTRY_POINTS, (description, refused)
    else:
        assert refused == [], (description, refused)
