"""Six-field cron expressions, seconds first, on top of cronsim.

``second minute hour day-of-month month day-of-week``. Day-of-week follows
cronsim: 0 or 7 is Sunday, 1 is Monday, or the names ``MON``-``SUN``. Times
are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

__all__ = ["FIELDS", "next_run", "validate_cron"]

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


def next_run(cron: str, after: datetime) -> datetime:
    """The first occurrence of ``cron`` strictly after ``after`` (UTC)."""
    start = after.astimezone(UTC)
    try:
        return next(CronSim(cron, start))
    except CronSimError as exc:
        validate_cron(cron)  # raises with the field named
        raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None
    except StopIteration:
        raise ValueError(f"cron expression {cron!r} never matches after {after}") from None
