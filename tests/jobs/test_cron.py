"""Six-field, seconds-first cron expressions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_monitor.jobs._cron import next_run, validate_cron

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
