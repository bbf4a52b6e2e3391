"""Six-field cron expressions, seconds first, on top of cronsim.

``second minute hour day-of-month month day-of-week``. Day-of-week follows
cronsim: 0 or 7 is Sunday, 1 is Monday, or the names ``MON``-``SUN``. Times
are UTC, or wall-clock times of an IANA time zone.

In a time zone, the cron names wall-clock times, and each one runs once:

* a wall time skipped by a spring change (02:30 in Paris on the last Sunday
  of March) runs once, shifted forward by the change (at 03:30), as
  :pep:`495` reads a time in a gap;
* a wall time repeated by an autumn change (02:30 on the last Sunday of
  October happens twice) runs once, at its first occurrence;
* occurrences that land on the same instant run once.

cronsim evaluates naive wall times; the mapping to instants is ours, since
cronsim started afresh from an aware time skips gap times and repeats folded
ones.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .._validate import MAX_SECONDS

logger = logging.getLogger("trio_monitor.jobs")

__all__ = ["FIELDS", "check_timezone", "next_run", "next_run_or_never", "validate_cron"]

#: The six fields, in order.
FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")

_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


def validate_cron(cron: str) -> str:
    """Return ``cron`` if it is a valid six-field expression, else raise ValueError.

    The error names the offending field, so ``"61 * * * * *"`` is refused
    with a message about the ``second`` field.
    """
    if not isinstance(cron, str):
        raise TypeError(f"cron expression must be a str, not {type(cron).__name__}")
    fields = cron.split()
    if len(fields) != len(FIELDS):
        raise ValueError(
            f"cron expression {cron!r} has {len(fields)} fields; six are needed, seconds first: "
            + " ".join(FIELDS)
        )
    try:
        CronSim(cron, _REFERENCE)
    except CronSimError as exc:
        message = str(exc)  # cronsim says "Bad <field>"
        field = next((name for name in FIELDS if message.endswith(name)), None)
        if field is None:
            raise ValueError(f"invalid cron expression {cron!r}: {message}") from None
        value = fields[FIELDS.index(field)]
        raise ValueError(f"invalid cron expression {cron!r}: bad {field} field {value!r}") from None
    return cron


#: Wider than any daylight-saving change (2 hours at most, Antarctica/Troll):
#: around a change, candidates this far either side are compared.
_DST_WINDOW = timedelta(hours=3)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    return ZoneInfo(name)


def check_timezone(name: object) -> str:
    """``name`` if it is an IANA time zone this system knows; ValueError/TypeError otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"timezone must be an IANA zone name (a str), not {name!r}")
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC' "
            "(install the tzdata package if this system has no zone database)"
        ) from None
    return name


def next_run(cron: str, after: datetime, timezone: str = "UTC") -> datetime:
    """The first occurrence of ``cron`` strictly after ``after``, as an aware UTC datetime.

    The cron is evaluated in ``timezone`` (see the module's notes on
    daylight-saving changes).
    """
    try:
        if timezone == "UTC":
            return next(CronSim(cron, after.astimezone(UTC)))
        return _next_in_zone(cron, after.astimezone(UTC), _zone(check_timezone(timezone)))
    except CronSimError as exc:
        validate_cron(cron)  # raises with the field named
        raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None
    except StopIteration:
        raise ValueError(f"cron expression {cron!r} never matches after {after}") from None


def _instant(wall: datetime, zone: tzinfo) -> datetime:
    """The instant a naive wall time names in ``zone``.

    The first of a repeated time; a skipped time shifted forward by the gap.
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _next_in_zone(cron: str, after: datetime, zone: tzinfo) -> datetime:
    wall_after = after.astimezone(zone).replace(tzinfo=None)
    first = next(CronSim(cron, wall_after))
    candidate = _instant(first, zone)
    if (
        zone.utcoffset(wall_after - _DST_WINDOW) == zone.utcoffset(first + _DST_WINDOW)
        and candidate > after
    ):
        return candidate  # no change near: wall times map one to one
    # A change is near: wall times no longer map to instants in order.
    # Compare every candidate in a window around it; keep the earliest
    # instant strictly after ``after``.
    best: datetime | None = None
    horizon: datetime | None = None
    for wall in CronSim(cron, wall_after - _DST_WINDOW):
        if horizon is not None and wall > horizon:
            break
        instant = _instant(wall, zone)
        if instant > after and (best is None or instant < best):
            best = instant
            horizon = max(wall, wall_after) + 2 * _DST_WINDOW
    if best is None:
        raise StopIteration
    return best


def next_run_or_never(cron: str, after: datetime, timezone: str = "UTC") -> datetime:
    """:func:`next_run`, but a stored expression that cannot be evaluated is skipped.

    What the recurring poller gives storage: one broken template (stored by
    an older version, or edited by hand) is logged and pushed out of reach
    (about 95 years), so that the other templates go on being enqueued
    instead of the whole poll failing for ever.
    """
    try:
        return next_run(cron, after, timezone)
    except (ValueError, TypeError):
        logger.exception(
            "recurring template with cron %r (time zone %r) cannot be evaluated: skipped",
            cron,
            timezone,
        )
        return after + timedelta(seconds=MAX_SECONDS)
