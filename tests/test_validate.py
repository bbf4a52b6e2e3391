"""The shared argument checks and the shared backoff."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trio_monitor as tm
from trio_monitor._validate import MAX_SECONDS, check_count, check_fraction, check_seconds


@pytest.mark.parametrize("value", [True, 1.5, "3", None])
def test_count_wrong_type_is_type_error_naming_argument(value: object) -> None:
    with pytest.raises(TypeError, match=r"Thing\.count"):
        check_count("Thing.count", value)


def test_count_below_minimum_is_value_error() -> None:
    with pytest.raises(ValueError, match=r"Thing.count must be an int >= 1"):
        check_count("Thing.count", 0, minimum=1)
    assert check_count("Thing.count", 1, minimum=1) == 1


@pytest.mark.parametrize("value", [True, "1", None, object()])
def test_seconds_wrong_type_is_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="x must be a number of seconds"):
        check_seconds("x", value)


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (math.nan, {}, "NaN"),
        (-1, {}, ">= 0"),
        (0, {"positive": True}, "> 0"),
        (math.inf, {}, "finite"),
        (2 * MAX_SECONDS, {"maximum": MAX_SECONDS}, "at most"),
    ],
)
def test_seconds_out_of_range_is_value_error(
    value: float, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_seconds("x", value, **kwargs)  # type: ignore[arg-type]


def test_seconds_inf_allowed_when_asked_even_with_maximum() -> None:
    assert check_seconds("x", math.inf, allow_inf=True, maximum=10) == math.inf


def test_fraction() -> None:
    assert check_fraction("j", 0) == 0.0
    with pytest.raises(ValueError, match="j must be a fraction"):
        check_fraction("j", 1.5)
    with pytest.raises(TypeError):
        check_fraction("j", False)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"initial": -1}, ValueError, "Backoff.initial"),
        ({"initial": "1"}, TypeError, "Backoff.initial"),
        ({"multiplier": 0.5}, ValueError, "Backoff.multiplier"),
        ({"multiplier": math.inf}, ValueError, "Backoff.multiplier"),
        ({"max": -1}, ValueError, "Backoff.max"),
        ({"jitter": 2}, ValueError, "Backoff.jitter"),
    ],
)
def test_backoff_refuses_bad_fields(
    kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        tm.Backoff(**kwargs)  # type: ignore[arg-type]


def test_backoff_grows_and_caps() -> None:
    backoff = tm.Backoff(initial=1.0, multiplier=2.0, max=5.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    initial=st.floats(min_value=0, max_value=1e6),
    multiplier=st.floats(min_value=1, max_value=1e3),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_uncapped_backoff_always_fits_a_datetime(
    attempt: int, initial: float, multiplier: float, jitter: float
) -> None:
    backoff = tm.Backoff(initial=initial, multiplier=multiplier, max=math.inf, jitter=jitter)
    delay = backoff.delay(attempt)
    assert 0 <= delay <= MAX_SECONDS
