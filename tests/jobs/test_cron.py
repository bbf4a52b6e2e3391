"""Six-field, seconds-first cron expressions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_monitor.jobs._cron import check_timezone, next_run, validate_cron

START = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("cron", "field"),
    [
        ("61 * * * * *", "second"),
        ("* 60 * * * *", "minute"),
        ("* * 24 * * *", "hour"),
        ("* * * 32 * *", "day-of-month"),
        ("* * * 0 * *", "day-of-month"),
        ("* * * * 13 *", "month"),
        ("* * * * * 8", "day-of-week"),
        ("* * * * * FUN", "day-of-week"),
        ("*/0 * * * * *", "second"),
    ],
)
def test_invalid_field_is_named(cron: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"bad {field} field"):
        validate_cron(cron)


@pytest.mark.parametrize("cron", ["* * * * *", "* * * * * * *", "", "   "])
def test_six_fields_are_required(cron: str) -> None:
    with pytest.raises(ValueError, match="six are needed, seconds first"):
        validate_cron(cron)


def test_not_a_string() -> None:
    with pytest.raises(TypeError, match="str"):
        validate_cron(5)  # type: ignore[arg-type]


def test_seconds_come_first() -> None:
    assert next_run("*/2 * * * * *", START) == START + timedelta(seconds=2)
    assert next_run("30 * * * * *", START) == START + timedelta(seconds=30)
    assert next_run("0 30 * * * *", START) == START + timedelta(minutes=30)
    assert next_run("0 0 8 * * *", START) == START + timedelta(hours=8)


def test_next_run_is_strictly_after() -> None:
    # START matches "0 0 0 * * *" itself; the next occurrence is a day later.
    assert next_run("0 0 0 * * *", START) == START + timedelta(days=1)
    assert next_run("* * * * * *", START + timedelta(microseconds=1)) == START + timedelta(
        seconds=1
    )


def test_day_of_week_numbering() -> None:
    sunday = START + timedelta(days=6)  # 2024-01-07
    for dow in ("0", "7", "SUN", "sun"):
        assert next_run(f"0 0 0 * * {dow}", START) == sunday
    assert next_run("0 0 0 * * 1", START) == START + timedelta(days=7)  # Monday, strictly after
    assert next_run("0 0 0 * * MON-FRI", START) == START + timedelta(days=1)


def test_next_run_returns_utc_for_other_zones() -> None:
    after = datetime(2024, 1, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=2)))  # 00:00 UTC
    result = next_run("0 0 * * * *", after)
    assert result == START + timedelta(hours=1)
    assert result.utcoffset() == timedelta(0)


@settings(max_examples=100, deadline=None)
@given(
    second=st.integers(0, 59),
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    after=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
def test_next_run_matches_and_is_the_first(
    second: int, minute: int, hour: int, after: datetime
) -> None:
    cron = f"{second} {minute} {hour} * * *"
    assert validate_cron(cron) == cron
    result = next_run(cron, after)
    assert after < result <= after + timedelta(days=1)
    assert (result.hour, result.minute, result.second, result.microsecond) == (
        hour,
        minute,
        second,
        0,
    )


# -- time zones and daylight-saving changes -------------------------------------

PARIS = "Europe/Paris"
SPRING = datetime(2026, 3, 28, 22, tzinfo=UTC)  # the night of 29 March: 02:00 -> 03:00
AUTUMN = datetime(2026, 10, 24, 22, tzinfo=UTC)  # the night of 25 October: 03:00 -> 02:00


def occurrences(cron: str, start: datetime, hours: float, zone: str = PARIS) -> list[datetime]:
    found: list[datetime] = []
    when = start
    while True:
        when = next_run(cron, when, zone)
        if when > start + timedelta(hours=hours):
            return found
        found.append(when)


def utc_times(*texts: str) -> list[datetime]:
    return [datetime.fromisoformat(text).replace(tzinfo=UTC) for text in texts]


def test_a_wall_time_skipped_in_spring_runs_once_shifted_forward() -> None:
    assert occurrences("0 30 2 * * *", SPRING, 30) == utc_times(
        "2026-03-29T01:30",  # 02:30 does not exist: 03:30 CEST
        "2026-03-30T00:30",  # 02:30 CEST
    )
    assert occurrences("0 0,30 1-3 * * *", SPRING, 6) == utc_times(
        "2026-03-29T00:00",  # 01:00 CET
        "2026-03-29T00:30",
        "2026-03-29T01:00",  # 02:00 (skipped) and 03:00 CEST: one instant, once
        "2026-03-29T01:30",  # 02:30 (skipped) and 03:30 CEST
    )


def test_a_wall_time_repeated_in_autumn_runs_once() -> None:
    assert occurrences("0 30 2 * * *", AUTUMN, 30) == utc_times(
        "2026-10-25T00:30",  # 02:30 CEST; the repeated 02:30 CET does not run again
        "2026-10-26T01:30",
    )
    assert occurrences("0 0 * * * *", AUTUMN, 5) == utc_times(
        "2026-10-24T23:00",
        "2026-10-25T00:00",  # 02:00 CEST
        "2026-10-25T02:00",  # 03:00 CET (02:00 CET is the same wall time again)
        "2026-10-25T03:00",
    )


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        check_timezone("Mars/Olympus_Mons")
    with pytest.raises(TypeError, match="timezone"):
        check_timezone(1)
    with pytest.raises(ValueError, match="unknown time zone"):
        next_run("0 * * * * *", SPRING, "Nowhere/Land")
    assert check_timezone("UTC") == "UTC"


@settings(max_examples=60, deadline=None)
@given(
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=4),
    hours=st.sets(st.integers(0, 23), min_size=1, max_size=6),
    start=st.sampled_from([SPRING, AUTUMN]),
    zone=st.sampled_from([PARIS, "America/New_York", "Australia/Lord_Howe"]),
)
def test_each_wall_time_runs_exactly_once_across_a_change(
    minutes: set[int], hours: set[int], start: datetime, zone: str
) -> None:
    """Property: the occurrences are strictly increasing, and they are exactly
    the instants the named wall times map to (first of a repeated time, a
    skipped time shifted forward), each once."""
    cron = f"0 {','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    tz = ZoneInfo(zone)
    found = occurrences(cron, start - timedelta(days=1), 24 * 9, zone)
    assert all(a < b for a, b in itertools.pairwise(found))
    expected: set[datetime] = set()
    local_day = (start - timedelta(days=1)).astimezone(tz).date()
    for day in range(11):
        for hour in hours:
            for minute in minutes:
                wall = datetime.combine(local_day + timedelta(days=day), time(hour, minute))
                expected.add(wall.replace(tzinfo=tz, fold=0).astimezone(UTC))
    low, high = start - timedelta(days=1), start - timedelta(days=1) + timedelta(hours=24 * 9)
    assert set(found) == {when for when in expected if low < when <= high}
