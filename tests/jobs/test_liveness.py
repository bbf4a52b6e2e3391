"""Liveness without comparing clocks: properties of ``Liveness.judge``.

A peer that keeps bumping its heartbeat more often than
``dead_server_timeout`` is never judged dead, whatever its wall clock does
(steps forwards or back, stands still); one that stops is judged dead within
the timeout plus the time between two looks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import assume, given
from hypothesis import strategies as st

from trio_monitor import jobs
from trio_monitor.jobs._liveness import Liveness

TIMEOUT = 5.0
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def peer_row(stamp: datetime) -> jobs.ServerInfo:
    return jobs.ServerInfo("peer#1", "peer", 1, ["default"], EPOCH, stamp)


def peer_job() -> jobs.Job:
    job = jobs.Job.new("m", None, now=EPOCH)
    job.state = jobs.Processing(EPOCH, "peer:worker:0", "peer#1")
    return job


@given(
    interval=st.floats(0.1, TIMEOUT * 0.9),
    steps=st.lists(st.floats(-300.0, 300.0), min_size=1, max_size=60),
    stop_after=st.one_of(st.none(), st.integers(0, 59)),
    looks=st.lists(st.floats(0.0, 120.0), min_size=1, max_size=80),
)
def test_a_peer_is_dead_only_once_its_heartbeat_stood_still_for_the_timeout(
    interval: float, steps: list[float], stop_after: int | None, looks: list[float]
) -> None:
    # The peer bumps at k * interval; the stamp it writes follows its own
    # wall clock, stepped at random, and differs from the one before (as the
    # server's _stamp makes sure).
    bumps: list[tuple[float, datetime]] = []
    wall = EPOCH
    last = len(steps) if stop_after is None else min(stop_after + 1, len(steps))
    for k in range(last):
        wall = wall + timedelta(seconds=interval + steps[k])
        if bumps and wall == bumps[-1][1]:
            wall += timedelta(microseconds=1)
        bumps.append((k * interval, wall))
    stopped_at = bumps[-1][0]  # its last bump
    liveness = Liveness("me#1", TIMEOUT, stale_processing_after=1e6, unique_id=True)
    job = peer_job()
    previous_look: float | None = None
    for mono in sorted(looks):
        current = [stamp for at, stamp in bumps if at <= mono]
        if not current:
            continue
        verdict = liveness.judge([peer_row(current[-1])], [job], held=(), now=EPOCH, mono=mono)
        dead = verdict.dead == ["peer#1"]
        assert verdict.stranded == ([job] if dead else [])
        if dead:
            # Never while it bumps: its last bump was at least TIMEOUT ago.
            assert mono - stopped_at >= TIMEOUT
            return
        if previous_look is not None and previous_look >= stopped_at:
            # Seen standing still since previous_look: dead TIMEOUT after that.
            assert mono < previous_look + TIMEOUT
        previous_look = mono


@given(
    age=st.floats(0.0, 1000.0),
    stale_after=st.floats(1.0, 500.0),
    held=st.booleans(),
)
def test_a_claim_without_a_heartbeat_row_is_stranded_once_stale(
    age: float, stale_after: float, held: bool
) -> None:
    assume(abs(age - stale_after) > 1e-3)  # datetimes keep microseconds
    job = jobs.Job.new("m", None, now=EPOCH)
    now = EPOCH + timedelta(seconds=1000)
    job.state = jobs.Processing(now - timedelta(seconds=age), "w", "plain-name")
    liveness = Liveness("me#1", TIMEOUT, stale_processing_after=stale_after, unique_id=True)
    verdict = liveness.judge([], [job], held={job.id} if held else set(), now=now, mono=0.0)
    expected = not held and age > stale_after
    assert verdict.stranded == ([job] if expected else [])
    assert verdict.dead == []


@given(unique=st.booleans(), held=st.booleans(), settled=st.booleans())
def test_our_own_claims_we_do_not_hold_are_lost_ones(
    unique: bool, held: bool, settled: bool
) -> None:
    job = jobs.Job.new("m", None, now=EPOCH)
    job.state = jobs.Processing(EPOCH, "w", "me#1")
    liveness = Liveness("me#1", TIMEOUT, stale_processing_after=1e6, unique_id=unique)
    rows = [jobs.ServerInfo("me#1", "me", 1, [], EPOCH, EPOCH)]
    verdict = liveness.judge(
        rows, [job], held={job.id} if held else set(), settled=settled, now=EPOCH, mono=0.0
    )
    # Only with a unique identity, not held, and no claim in flight.
    assert verdict.stranded == ([job] if unique and not held and settled else [])
