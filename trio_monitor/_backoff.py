"""Exponential backoff with jitter, shared by every retry loop in the package.

The supervisor waits with it before restarting a child; the job server's
loops wait with it after a failing storage call; the PostgreSQL listener
waits with it before reconnecting. One formula, one set of checks.
"""

from __future__ import annotations

import math
import random

import attrs

from ._validate import MAX_SECONDS, attrs_fraction, attrs_multiplier, attrs_seconds

__all__ = ["Backoff"]


@attrs.frozen
class Backoff:
    """Exponential backoff: how long to wait before the n-th consecutive retry.

    The wait before retry ``n`` (1-based) is ``min(max, initial *
    multiplier ** (n - 1))``, then moved at random by up to ``jitter`` times
    itself either way, so that tasks that failed together do not all retry
    in the same instant. ``max`` may be ``math.inf`` (no cap); a wait is
    never longer than about 95 years, so it always fits a datetime.

    Attributes:
      initial (float): Seconds before the first retry (>= 0).
      multiplier (float): Growth per consecutive retry (>= 1).
      max (float): Cap on the wait, in seconds (>= 0, may be ``math.inf``).
      jitter (float): Fraction of the wait added or taken at random (0-1).

    Raises:
      TypeError: A field is not a number.
      ValueError: A field is out of its range; the message names it.
    """

    initial: float = attrs.field(default=0.1, validator=attrs_seconds("Backoff", "initial"))
    multiplier: float = attrs.field(
        default=2.0, validator=attrs_multiplier("Backoff", "multiplier")
    )
    max: float = attrs.field(
        default=30.0, validator=attrs_seconds("Backoff", "max", allow_inf=True)
    )
    jitter: float = attrs.field(default=0.1, validator=attrs_fraction("Backoff", "jitter"))

    def base_delay(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1-based), without jitter."""
        if not self.initial:
            return 0.0  # 0 * inf would be NaN, and the overflow below a 30 s wait
        exponent = max(attempt - 1, 0)
        try:
            raw = self.initial * self.multiplier**exponent
        except OverflowError:
            raw = math.inf
        return min(self.max, raw, MAX_SECONDS)

    def delay(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1-based), jitter included."""
        base = self.base_delay(attempt)
        if not self.jitter:
            return base
        return min(MAX_SECONDS, max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter))))
