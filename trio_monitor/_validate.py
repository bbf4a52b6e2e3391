"""Argument checks shared by every component.

One rule everywhere: a value of the wrong type raises :class:`TypeError`, a
value of the right type outside its range raises :class:`ValueError`, and
both messages name the argument (``"RuntimeConfig.max_queue_size must be
..."``). ``bool`` is never accepted as a number, although it is an ``int``
subclass: ``max_restarts=True`` is a bug, not a 1.

The ``attrs_*`` helpers wrap the same checks as attrs converters, so a frozen
config record checks its fields with the same code and messages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "MAX_SECONDS",
    "attrs_count",
    "attrs_fraction",
    "attrs_multiplier",
    "attrs_seconds",
    "check_callable",
    "check_count",
    "check_fraction",
    "check_seconds",
    "check_str",
    "shown",
]

#: The longest duration anything persisted may be, in seconds (about 95
#: years). A datetime plus more overflows near year 9999 well before float
#: seconds do, so a longer TTL or delay is refused (or a backoff clamped)
#: here rather than raising :class:`OverflowError` inside a running server.
MAX_SECONDS: Final = 3.0e9


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message: never raises, never huge.

    An argument is shown back to the caller who passed it; its ``__repr__``
    may raise, and a huge int cannot even be turned into text (Python caps
    int-to-str conversion), so the message stays readable whatever it is.
    """
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object, unprintable>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_count(name: str, value: object, *, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {shown(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {shown(value)}")
    return value


def check_seconds(
    name: str,
    value: object,
    *,
    positive: bool = False,
    allow_inf: bool = False,
    maximum: float | None = None,
) -> float:
    """``value`` as a float number of seconds.

    ``>= 0`` (``> 0`` if ``positive``), never NaN, finite unless
    ``allow_inf``, and at most ``maximum`` when given.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {shown(value)}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float: as long as forever
        seconds = math.inf if value > 0 else -math.inf
    if math.isnan(seconds):
        raise ValueError(f"{name} must be a number of seconds, not NaN")
    if positive and not seconds > 0:
        raise ValueError(f"{name} must be > 0 seconds, not {shown(value)}")
    if seconds < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {shown(value)}")
    if math.isinf(seconds) and not allow_inf:
        raise ValueError(f"{name} must be a finite number of seconds, not {shown(value)}")
    if maximum is not None and seconds > maximum and not (allow_inf and math.isinf(seconds)):
        raise ValueError(f"{name} must be at most {maximum:g} seconds, not {shown(value)}")
    return seconds


def check_fraction(name: str, value: object) -> float:
    """``value`` as a float in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {shown(value)}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1], not {shown(value)}")
    return float(value)


def check_str(name: str, value: object, *, allow_empty: bool = False) -> str:
    """``value`` as a (non-empty, unless ``allow_empty``) str."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {shown(value)}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must be a non-empty str")
    return value


def check_callable(name: str, value: object) -> Callable[..., Any]:
    """``value`` if it is callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {shown(value)}")
    return value


# attrs validators: the same checks, for fields of frozen config records.
# (Validators, not converters: mypy's attrs plugin types converters only when
# they are named functions.)
AttrsValidator = Callable[[Any, Any, Any], None]


def _qualified(owner: str, field: str) -> str:
    return f"{owner}.{field}" if owner else field


def attrs_count(owner: str, field: str, *, minimum: int = 0) -> AttrsValidator:
    """An attrs validator running :func:`check_count` for ``owner.field``."""
    name = _qualified(owner, field)

    def validate(_instance: object, _attribute: object, value: object) -> None:
        check_count(name, value, minimum=minimum)

    return validate


def attrs_seconds(
    owner: str,
    field: str,
    *,
    positive: bool = False,
    allow_inf: bool = False,
    maximum: float | None = None,
) -> AttrsValidator:
    """An attrs validator running :func:`check_seconds` for ``owner.field``."""
    name = _qualified(owner, field)

    def validate(_instance: object, _attribute: object, value: object) -> None:
        check_seconds(name, value, positive=positive, allow_inf=allow_inf, maximum=maximum)

    return validate


def attrs_fraction(owner: str, field: str) -> AttrsValidator:
    """An attrs validator running :func:`check_fraction` for ``owner.field``."""
    name = _qualified(owner, field)

    def validate(_instance: object, _attribute: object, value: object) -> None:
        check_fraction(name, value)

    return validate


def attrs_multiplier(owner: str, field: str) -> AttrsValidator:
    """An attrs validator for a growth factor: a finite number ``>= 1``."""
    name = _qualified(owner, field)

    def validate(_instance: object, _attribute: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number, not {shown(value)}")
        if not (math.isfinite(value) and value >= 1):
            raise ValueError(f"{name} must be a finite number >= 1, not {shown(value)}")

    return validate
