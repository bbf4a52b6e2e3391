"""Costly readings: reused while young, refreshed in the background while the app runs."""

from __future__ import annotations

import trio
import trio.testing

from trio_monitor import jobs
from trio_monitor.jobs.dashboard import create_app
from trio_monitor.jobs.dashboard._cache import IDLE_AFTER, Cached, refresh_in_background

from .helpers import HTML, client_for


class Counter:
    def __init__(self, size: int = 10, delay: float = 0.0) -> None:
        self.size, self.delay, self.calls = size, delay, 0

    async def __call__(self) -> int:
        await trio.sleep(self.delay)
        self.calls += 1
        return self.size


def ten_seconds_if_big(value: int) -> float:
    return 10.0 if value > 5 else 0.0


async def test_small_values_are_read_every_time(autojump_clock: trio.testing.MockClock) -> None:
    read = Counter(size=1)
    cached = Cached(read, ten_seconds_if_big)
    assert await cached.get() == (1, False)
    assert await cached.get() == (1, False)
    assert read.calls == 2


async def test_big_values_are_reused_until_they_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    read = Counter(size=10)
    cached = Cached(read, ten_seconds_if_big)
    assert await cached.get() == (10, False)
    await trio.sleep(9.9)
    assert await cached.get() == (10, True)
    await trio.sleep(0.2)
    assert await cached.get() == (10, False)
    assert read.calls == 2


async def test_concurrent_requests_read_once(autojump_clock: trio.testing.MockClock) -> None:
    read = Counter(size=10, delay=1.0)
    cached = Cached(read, ten_seconds_if_big)
    results: list[tuple[int, bool]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(lambda: _append(cached, results))
    assert read.calls == 1
    assert sorted(results) == [(10, False)] + [(10, True)] * 4


async def _append(cached: Cached[int], results: list[tuple[int, bool]]) -> None:
    results.append(await cached.get())


async def test_the_background_refresh_keeps_requests_from_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    read = Counter(size=10, delay=2.0)  # a slow recount
    cached = Cached(read, ten_seconds_if_big)
    async with trio.open_nursery() as nursery:
        await nursery.start(refresh_in_background, [cached])
        await cached.get()  # the first reading is paid by a request
        for _ in range(60):  # a browser polling every two seconds for two minutes
            await trio.sleep(2.0)
            start = trio.current_time()
            value, reused = await cached.get()
            assert (value, reused) == (10, True)
            assert trio.current_time() - start < 0.1  # no request waited for a read
        assert 10 <= read.calls <= 16  # about every eight seconds
        # Nobody asks any more: the refreshes stop.
        calls = read.calls
        await trio.sleep(IDLE_AFTER + 30)
        assert read.calls <= calls + 8
        stopped = read.calls
        await trio.sleep(100)
        assert read.calls == stopped
        nursery.cancel_scope.cancel()
    assert not cached.refreshed_in_background


async def test_a_failing_background_read_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    outcomes = [10, RuntimeError("database away"), 10]
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        outcome = outcomes[min(calls, 2)]
        calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    cached = Cached(flaky, ten_seconds_if_big)
    async with trio.open_nursery() as nursery:
        await nursery.start(refresh_in_background, [cached])
        await cached.get()
        for _ in range(10):
            await trio.sleep(2)
            assert (await cached.get())[0] == 10
        nursery.cancel_scope.cancel()
    assert calls >= 3


async def test_the_app_lifespan_runs_the_refresher() -> None:
    async with jobs.open_storage("memory://") as storage:
        app = create_app(storage)
        dashboard = app.state.dashboard
        async with app.router.lifespan_context(app):
            assert dashboard.counts.refreshed_in_background
            assert dashboard.samples.refreshed_in_background
            async with client_for(app) as client:
                assert (await client.get("/", headers=HTML)).status_code == 200
        assert not dashboard.counts.refreshed_in_background
