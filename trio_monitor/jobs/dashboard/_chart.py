"""The overview's throughput chart: finished jobs per minute, drawn as inline SVG.

The figures come from the newest finished jobs (:data:`SAMPLE` of each
outcome), bucketed by the minute they finished (the ``finished_at`` every
terminal state records). When even the oldest of those finished inside the
window, the minutes before it were not sampled: the chart shows them hatched
rather than as zero, so a busy hour never looks quiet.

The sample is the newest jobs by creation (the order ``jobs.Client`` lists
in); a job created before the sample's oldest but finished inside the window
is missed. With retries and queues that drain in order that is rare, and
only a full sample (a busy hour) can miss it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from .._model import Aborted, Failed, Job, Succeeded

__all__ = ["SAMPLE", "Chart", "finished_at", "throughput"]

#: Finished jobs of each outcome read for the chart.
SAMPLE = 1000
#: Minutes in the chart.
MINUTES = 60

# Geometry of the SVG (user units; it scales to its box).
WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


def finished_at(job: Job) -> datetime:
    """When ``job`` finished: the ``finished_at`` its terminal state records.

    Raises:
      TypeError: ``job`` has not finished (its state records no finish time).
    """
    state = job.state
    if not isinstance(state, (Succeeded, Failed, Aborted)):
        raise TypeError(f"job {job.id} has not finished (it is {state.name})")
    return state.finished_at


@attrs.frozen
class Bar:
    """One minute of the chart, with its geometry."""

    start: datetime
    succeeded: int
    failed: int
    sampled: bool
    x: float
    width: float
    succeeded_y: float
    succeeded_height: float
    failed_y: float
    failed_height: float


@attrs.frozen
class Chart:
    """Per-minute finished-job counts over the last hour, ready to draw."""

    bars: tuple[Bar, ...]
    succeeded: int
    failed: int
    peak: int
    #: Minutes at the start of the window that the sample did not reach.
    unsampled_minutes: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM

    @property
    def failure_rate(self) -> float | None:
        """Failed / finished over the window; None when nothing finished."""
        total = self.succeeded + self.failed
        return self.failed / total if total else None

    @property
    def axis_labels(self) -> list[tuple[float, str]]:
        """``(x, text)`` under the plot: an hour ago, half an hour ago, now."""
        span = WIDTH - LEFT - RIGHT
        return [(LEFT, "-60 min"), (LEFT + span / 2, "-30 min"), (WIDTH - RIGHT, "now")]


def throughput(
    succeeded: Sequence[Job], failed: Sequence[Job], now: datetime, *, sample: int = SAMPLE
) -> Chart:
    """Bucket the newest finished jobs by minute over the hour before ``now``.

    ``succeeded`` and ``failed`` are the newest jobs of each outcome, at most
    ``sample`` each. If a list is full, its oldest finish time bounds what
    the sample covers.
    """
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    counts = [[0, 0] for _ in range(MINUTES)]
    covered_from = start
    for column, rows in ((0, succeeded), (1, failed)):
        oldest: datetime | None = None
        for job in rows:
            when = finished_at(job)
            oldest = when if oldest is None else min(oldest, when)
            index = math.floor((when - start).total_seconds() / 60)
            if 0 <= index < MINUTES:
                counts[index][column] += 1
        if len(rows) >= sample and oldest is not None and oldest > covered_from:
            covered_from = oldest
    unsampled = max(0, min(MINUTES, math.ceil((covered_from - start).total_seconds() / 60)))
    peak = max((s + f for s, f in counts), default=0)
    return Chart(
        bars=tuple(_bars(start, counts, unsampled, peak)),
        succeeded=sum(s for s, _ in counts),
        failed=sum(f for _, f in counts),
        peak=peak,
        unsampled_minutes=unsampled,
    )


def _bars(start: datetime, counts: list[list[int]], unsampled: int, peak: int) -> list[Bar]:
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / MINUTES
    scale = plot_height / peak if peak else 0.0
    bottom = HEIGHT - BOTTOM
    bars: list[Bar] = []
    for i, (ok, bad) in enumerate(counts):
        ok_height = ok * scale
        bad_height = bad * scale
        bars.append(
            Bar(
                start=start + timedelta(minutes=i),
                succeeded=ok,
                failed=bad,
                sampled=i >= unsampled,
                x=round(LEFT + i * slot + 1, 2),
                width=round(slot - 2, 2),
                succeeded_y=round(bottom - ok_height, 2),
                succeeded_height=round(ok_height, 2),
                failed_y=round(bottom - ok_height - bad_height, 2),
                failed_height=round(bad_height, 2),
            )
        )
    return bars
