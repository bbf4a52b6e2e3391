"""Six-field cron expressions, seconds first, on top of cronsim.

``second minute hour day-of-month month day-of-week``. Day-of-week follows
cronsim: 0 or 7 is Sunday, 1 is Monday, or the names ``MON``-``SUN``. Times
are UTC.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

from .._validate import MAX_SECONDS

logger = logging.getLogger("trio_monitor.jobs")

__all__ = ["FIELDS", "next_run", "next_run_or_never", "validate_cron"]

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


def next_run_or_never(cron: str, after: datetime) -> datetime:
    """:func:`next_run`, but a stored expression that cannot be evaluated is skipped.

    What the recurring poller gives storage: one broken template (stored by
    an older version, or edited by hand) is logged and pushed out of reach
    (about 95 years), so that the other templates go on being enqueued
    instead of the whole poll failing for ever.
    """
    try:
        return next_run(cron, after)
    except (ValueError, TypeError):
        logger.exception("recurring template with cron %r cannot be evaluated: skipped", cron)
        return after + timedelta(seconds=MAX_SECONDS)
