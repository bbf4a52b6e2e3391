"""Every public duration refuses bad values cleanly, whatever they are.

One property over every parameter that takes seconds, in every component:
given any value (floats with NaN and both infinities, ints far beyond a
float's range, negative zero, bools, strings, objects whose ``repr``
raises), the call either accepts it or raises ``TypeError``/``ValueError``
whose message names the parameter. Never ``OverflowError`` from a float or a
datetime, never an error raised by the value's own ``repr``, never a huge
message. Where a value is accepted, a job server using it works on.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_monitor as tm
from trio_monitor import jobs


class UnprintableNumber(float):
    """A float whose repr raises: a hostile argument."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr refused")


DURATIONS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**5000), max_value=10**5000),
    st.sampled_from(
        [
            0,
            -0.0,
            5e-324,
            3.0e9,
            3.0e9 + 1,
            1e308,
            math.inf,
            -math.inf,
            math.nan,
            10**400,
            True,
            "1",
            b"1",
            [1],
            Unprintable(),
            UnprintableNumber(-1.0),
            UnprintableNumber(math.nan),
        ]
    ),
)

Call = Callable[[Any], object]


def _server_config(field: str) -> Call:
    return lambda value: jobs.ServerConfig(**{field: value})


SYNC_ENTRIES: dict[str, Call] = {
    "RuntimeConfig.drain_timeout": lambda v: tm.RuntimeConfig(drain_timeout=v),
    "RuntimeConfig.job_timeout": lambda v: tm.RuntimeConfig(job_timeout=v),
    "Backoff.initial": lambda v: tm.Backoff(initial=v),
    "Backoff.max": lambda v: tm.Backoff(max=v),
    "RetryPolicy.initial_delay": lambda v: jobs.RetryPolicy(initial_delay=v),
    "RetryPolicy.max_delay": lambda v: jobs.RetryPolicy(max_delay=v),
    "Retry delay": lambda v: jobs.Retry(delay=v),
    "timeout of 'w'": lambda v: jobs.WorkerRegistry().register("w", _noop_worker, timeout=v),
    **{
        f"ServerConfig.{field}": _server_config(field)
        for field in (
            "polling_interval",
            "job_timeout",
            "scheduler_poll_interval",
            "shutdown_timeout",
            "stale_processing_after",
            "recurring_poll_interval",
            "cleanup_interval",
            "succeeded_ttl",
            "failed_ttl",
            "heartbeat_interval",
            "dead_server_timeout",
        )
    },
}


async def _noop_worker(job: jobs.Job, ctx: jobs.WorkerContext) -> None:
    pass


async def _idle() -> None:
    await trio.sleep_forever()


async def _open_registry(value: Any) -> None:
    async with tm.open_registry(shutdown_deadline=value):
        pass


async def _join_all(value: Any) -> None:
    async with tm.open_registry() as registry:
        await registry.join_all(value)


async def _open_supervisor(value: Any) -> None:
    async with tm.open_supervisor(within=value):
        pass


async def _child_shutdown(value: Any) -> None:
    async with tm.open_supervisor() as supervisor:
        await supervisor.start("child", _idle, shutdown_timeout=value)


async def _child_liveness(value: Any) -> None:
    async with tm.open_supervisor() as supervisor:
        await supervisor.start("child", _idle, liveness_timeout=value)


def _enqueue(keyword: str) -> Callable[[Any], Awaitable[None]]:
    async def enqueue(value: Any) -> None:
        async with jobs.open_storage("memory://") as storage:
            server = jobs.JobServer(jobs.ServerConfig(), storage, jobs.WorkerRegistry())
            job_id = await server.enqueue("m", None, **{keyword: value})
            # Accepted: it is stored, in a state that makes sense.
            job = await storage.get(job_id)
            assert job is not None
            assert isinstance(job.state, jobs.Enqueued | jobs.Scheduled)

    return enqueue


ASYNC_ENTRIES: dict[str, Callable[[Any], Awaitable[None]]] = {
    "shutdown_deadline": _open_registry,
    "deadline": _join_all,
    "within": _open_supervisor,
    "shutdown_timeout": _child_shutdown,
    "liveness_timeout": _child_liveness,
    "delay": _enqueue("delay"),
    "timeout": _enqueue("timeout"),
}


def _check_refusal(name: str, error: BaseException) -> None:
    assert isinstance(error, TypeError | ValueError), (
        f"{name}: {type(error).__name__} instead of TypeError/ValueError"
    )
    message = str(error)
    assert name in message, f"the message does not name {name!r}: {message!r}"
    assert len(message) < 500, f"{name}: a {len(message)}-character message"


@pytest.mark.parametrize("name", sorted(SYNC_ENTRIES))
@settings(max_examples=60, deadline=None)
@given(value=DURATIONS)
def test_sync_durations_accept_or_refuse_by_name(name: str, value: object) -> None:
    try:
        SYNC_ENTRIES[name](value)
    except Exception as error:  # any error: _check_refusal judges it
        _check_refusal(name, error)


@pytest.mark.parametrize("name", sorted(ASYNC_ENTRIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=DURATIONS)
def test_async_durations_accept_or_refuse_by_name(name: str, value: object) -> None:
    async def main() -> None:
        try:
            await ASYNC_ENTRIES[name](value)
        except Exception as error:  # any error: _check_refusal judges it
            _check_refusal(name, error)

    # Accepted durations may be long: virtual time, so nothing waits for them.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# The same rule for every other argument checked by type: an argument whose
# repr raises is still refused with the TypeError that names the parameter.


async def _subscribe(value: Any) -> None:
    async with tm.open_monitor() as monitor:
        monitor.subscribe(value)


async def _supervisor_strategy(value: Any) -> None:
    async with tm.open_supervisor(strategy=value):
        pass


async def _supervisor_backoff(value: Any) -> None:
    async with tm.open_supervisor(backoff=value):
        pass


async def _registry_kind(value: Any) -> None:
    async with tm.open_registry() as registry:
        registry.spawn("t", value, _idle)


def _client_call(**kwargs: Any) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        async with jobs.open_storage("memory://") as storage:
            await jobs.Client(storage).enqueue("m", None, **kwargs)

    return call


HOSTILE_ENTRIES: dict[str, Callable[[Any], Awaitable[None]]] = {
    "max_buffer_size": _subscribe,
    "strategy": _supervisor_strategy,
    "backoff": _supervisor_backoff,
    "task kind": _registry_kind,
    "priority": lambda v: _client_call(priority=v)(),
    "headers": lambda v: _client_call(headers=v)(),
    "run_at": lambda v: _client_call(run_at=v)(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ENTRIES))
def test_unprintable_arguments_are_refused_by_name(name: str) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match=name) as caught:
            await HOSTILE_ENTRIES[name](Unprintable())
        assert "unprintable" in str(caught.value)

    trio.run(main)
