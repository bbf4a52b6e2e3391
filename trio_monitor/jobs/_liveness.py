"""Which ``Processing`` jobs are stranded: liveness judged without comparing clocks.

Two servers' wall clocks never agree exactly, and either may be stepped (an
NTP correction, a resumed laptop). Comparing one server's heartbeat stamp
with another's "now" therefore makes a live server look dead whenever the
clocks disagree by more than ``dead_server_timeout``, and its jobs then run
twice. So a peer is judged by whether its heartbeat row *changes*: the
stamp is an opaque token, and the time it has stayed the same is measured on
this process's monotonic Trio clock. A peer is dead once its row has not
changed for ``dead_server_timeout`` of our own time; a step of anyone's wall
clock, forwards or back, is still a change.

Jobs of servers that have no heartbeat row (a server running without
heartbeats, or one that deregistered leaving a claim behind) can only be
judged by their claim time: they are stranded once claimed more than
``stale_processing_after`` ago, by this server's wall clock. The same holds
for a job whose server's row has not been bumped for
``stale_processing_after`` either (five minutes by default: far more than a
clock step), so that a server starting next to long-dead rows reclaims
their jobs at once, as §4 of the contract says, without first watching the
rows for ``dead_server_timeout``.

A job stamped with this server's own identity (unique per start, with
heartbeats on) that this server does not hold was lost by a bug: it is
stranded at once, once no claim was in flight while it was looked at.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

import attrs

from ._model import Job, Processing, ServerInfo

__all__ = ["Liveness", "Verdict"]


@attrs.frozen
class Verdict:
    """What one look found.

    Attributes:
      stranded: Processing jobs to re-enqueue (their attempt stays counted).
      dead: Ids of peers found dead, whose rows are to be removed once
        their jobs are re-enqueued.
    """

    stranded: list[Job]
    dead: list[str]


class Liveness:
    """Remembers how long each peer's heartbeat has stayed the same.

    Args:
      own_id: This server's identity; its row is never judged.
      dead_server_timeout: Seconds of our monotonic time a peer's heartbeat
        may stay the same before it is dead.
      stale_processing_after: Age (wall clock) after which a claim by a
        server without a row is stranded.
      unique_id: Whether ``own_id`` is unique to this start (``name#uuid``,
        heartbeats on). Only then are jobs stamped with it that this server
        does not hold its own lost jobs; a plain name may be shared with a
        previous run or another process.
    """

    __slots__ = ("_dead_after", "_own_id", "_seen", "_stale_after", "_unique_id")

    def __init__(
        self,
        own_id: str,
        dead_server_timeout: float,
        stale_processing_after: float,
        *,
        unique_id: bool,
    ) -> None:
        self._own_id = own_id
        self._unique_id = unique_id
        self._dead_after = dead_server_timeout
        self._stale_after = timedelta(seconds=stale_processing_after)
        # server id -> (heartbeat stamp last seen, monotonic time it was first seen)
        self._seen: dict[str, tuple[datetime, float]] = {}

    def judge(
        self,
        servers: Sequence[ServerInfo],
        processing: Sequence[Job],
        *,
        held: Collection[str],
        settled: bool = True,
        now: datetime,
        mono: float,
    ) -> Verdict:
        """Which of ``processing`` are stranded, and which peers are dead.

        ``held`` are the ids of the jobs this server holds (claimed and not
        yet written back): never stranded, whatever name they carry.
        ``settled`` says that no claim of this server was in flight while
        ``processing`` was read, so that its own jobs it does not hold are
        lost ones. ``now`` is the wall clock, ``mono``
        :func:`trio.current_time`, both read just after ``servers`` and
        ``processing`` were.
        """
        rows: dict[str, ServerInfo] = {}
        dead: list[str] = []
        seen: dict[str, tuple[datetime, float]] = {}
        for info in servers:
            rows[info.id] = info
            if info.id == self._own_id:
                continue
            before = self._seen.get(info.id)
            if before is None or before[0] != info.last_heartbeat:
                seen[info.id] = (info.last_heartbeat, mono)
                continue
            seen[info.id] = before
            if mono - before[1] >= self._dead_after:
                dead.append(info.id)
        # Rows that are gone are forgotten: a server registering again under
        # the same id starts a fresh observation.
        self._seen = seen
        stranded: list[Job] = []
        dead_set = set(dead)
        stale_before = now - self._stale_after
        for job in processing:
            state = job.state
            if not isinstance(state, Processing) or job.id in held:
                continue
            if self._unique_id and state.server_name == self._own_id:
                if settled:
                    stranded.append(job)
            elif state.server_name in rows:
                row = rows[state.server_name]
                if state.server_name in dead_set or (
                    # A row silent for much longer than any clock step: the
                    # start-up sweep need not wait to watch it.
                    state.started_at < stale_before and row.last_heartbeat < stale_before
                ):
                    stranded.append(job)
            elif state.started_at < stale_before:
                stranded.append(job)
        return Verdict(stranded, dead)
