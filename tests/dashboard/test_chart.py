"""The throughput chart's bucketing and geometry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_monitor import jobs
from trio_monitor.jobs.dashboard._chart import HEIGHT, MINUTES, finished_at, throughput

from .helpers import job

NOW = datetime(2026, 12, 1, 12, 30, 30, tzinfo=UTC)


def _done(minutes_ago: float, ok: bool = True) -> jobs.Job:
    at = NOW - timedelta(minutes=minutes_ago)
    # Created well before: the chart goes by finish time, never creation time.
    created = at - timedelta(hours=2)
    state = jobs.Succeeded(1, 0.1, finished_at=at) if ok else jobs.Failed("x", finished_at=at)
    return job(state=state, created_at=created)


def test_buckets_by_minute_and_leaves_out_older_jobs() -> None:
    chart = throughput([_done(0), _done(0.2), _done(30), _done(61)], [_done(1, ok=False)], NOW)
    assert len(chart.bars) == MINUTES
    assert chart.bars[-1].succeeded == 2
    assert chart.bars[-2].failed == 1
    assert chart.succeeded == 3  # the one finished 61 minutes ago is outside
    assert chart.failed == 1
    assert chart.failure_rate == 0.25
    assert chart.unsampled_minutes == 0


def test_a_full_sample_marks_the_minutes_it_does_not_reach() -> None:
    recent = [_done(i / 10) for i in range(50)]  # the newest 50 cover five minutes
    chart = throughput(recent, [], NOW, sample=50)
    assert chart.unsampled_minutes == MINUTES - 5  # a partly covered minute is not sampled
    assert not any(bar.sampled for bar in chart.bars[: chart.unsampled_minutes])
    assert chart.succeeded == 50


def test_the_finish_time_is_the_terminal_states_own() -> None:
    assert finished_at(_done(2)) == NOW - timedelta(minutes=2)
    aborted = job(state=jobs.Aborted("stop", finished_at=NOW), created_at=NOW - timedelta(days=1))
    assert finished_at(aborted) == NOW
    with pytest.raises(TypeError, match="has not finished"):
        finished_at(job(created_at=NOW))


def test_no_jobs_no_rate() -> None:
    chart = throughput([], [], NOW)
    assert chart.failure_rate is None
    assert chart.peak == 0
    assert all(bar.succeeded_height == 0 for bar in chart.bars)


@given(
    ok=st.lists(st.floats(min_value=0, max_value=120), max_size=80),
    bad=st.lists(st.floats(min_value=0, max_value=120), max_size=80),
)
def test_bars_add_up_and_fit_the_plot(ok: list[float], bad: list[float]) -> None:
    chart = throughput([_done(m) for m in ok], [_done(m, ok=False) for m in bad], NOW)
    assert sum(bar.succeeded for bar in chart.bars) == chart.succeeded
    # The window starts on the minute, 59 whole minutes before NOW's (11:31:00).
    start = NOW.replace(second=0) - timedelta(minutes=MINUTES - 1)
    assert chart.succeeded == sum(1 for m in ok if NOW - timedelta(minutes=m) >= start)
    assert chart.failed == sum(bar.failed for bar in chart.bars)
    assert chart.peak == max((b.succeeded + b.failed for b in chart.bars), default=0)
    for bar in chart.bars:
        assert 0 <= bar.failed_y <= bar.succeeded_y <= HEIGHT
        assert bar.succeeded_height >= 0
        assert bar.failed_height >= 0
