"""Driving psycopg's blocking connections from Trio: cancellable calls, and a listener.

psycopg's async connection needs asyncio, so the PostgreSQL backend uses
its sync connections on threads. Two pieces, each usable on its own:

* :class:`CallRunner` runs ``fn(conn)`` on a worker thread with a pooled
  connection. A Trio task cancelled while its statement runs sends a
  PostgreSQL cancel request for that statement (``Connection.cancel_safe``,
  from a helper thread) and waits for the worker thread to come back: the
  server aborts the statement, its transaction rolls back (so no row lock
  outlives the cancelled task), and the call raises :class:`trio.Cancelled`.
  A statement that completed before the cancel landed is reported as
  completed (Trio's rule: a checkpoint that raises ``Cancelled`` did
  nothing). A connection that had a cancel aimed at it is closed rather than
  reused, so a late cancel can never hit somebody else's statement. Each
  call's cancellation is its own: no call waits on another's task.
* :class:`Listener` is a thread on its own connection, outside the pool,
  that LISTENs on a channel and calls back into Trio on every NOTIFY
  (bursts coalesced into one wake-up). It reconnects after a connection loss
  and then calls back once, since notifications sent meanwhile were lost.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Generic, TypeAlias, TypeVar

import outcome
import psycopg
import psycopg.sql
import psycopg_pool
import trio

from ...._backoff import Backoff

__all__ = ["CallRunner", "Conn", "Listener"]

logger = logging.getLogger("trio_monitor.jobs.postgres")

T = TypeVar("T")
Conn: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"

# How often a call waiting for a connection looks whether it was cancelled.
_GETCONN_SLICE = 0.1
# How long the listener blocks between looks at its stop flag.
_LISTEN_SLICE = 1.0
# The listener's waits between reconnection attempts.
_RECONNECT = Backoff(initial=0.1, multiplier=2.0, max=2.0, jitter=0.5)


class _CancelledBeforeStart(Exception):
    """The call was cancelled before it touched the database."""


class _Call(Generic[T]):
    """One call running in a worker thread, cancellable from Trio.

    The worker thread takes a connection, publishes it, runs ``fn`` and
    unpublishes it; :meth:`request_cancel` (Trio thread) sends a PostgreSQL
    cancel request for the published connection. A connection that had a
    cancel sent is closed once the cancel request completed, so the request
    can never land on a later statement.
    """

    __slots__ = (
        "_cancel_done",
        "_conn",
        "_fn",
        "_lock",
        "_on_connection_error",
        "_pool",
        "_timeout",
        "cancel_requested",
    )

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Conn],
        timeout: float,
        on_connection_error: Callable[[], None],
        fn: Callable[[Conn], T],
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._on_connection_error = on_connection_error
        self._fn = fn
        self._lock = threading.Lock()
        self._conn: Conn | None = None
        self._cancel_done: threading.Event | None = None
        self.cancel_requested = False

    def run(self) -> T:  # worker thread
        pool = self._pool
        conn = self._getconn(pool)
        try:
            with self._lock:
                if self.cancel_requested:
                    raise _CancelledBeforeStart
                self._conn = conn
            try:
                return self._fn(conn)
            except psycopg.OperationalError:
                if not self.cancel_requested:
                    # Probably a lost connection: drop the other broken idle
                    # connections now, so this is the only call that fails.
                    self._on_connection_error()
                raise
            finally:
                with self._lock:
                    self._conn = None
                    cancel_done = self._cancel_done
                if cancel_done is not None:
                    cancel_done.wait()
                    conn.close()
        finally:
            pool.putconn(conn)

    def _getconn(self, pool: psycopg_pool.ConnectionPool[Conn]) -> Conn:
        # Wait in slices, so that a cancelled call stops waiting promptly
        # while PostgreSQL is unreachable.
        remaining = self._timeout
        while True:
            if self.cancel_requested:
                raise _CancelledBeforeStart
            slice_ = min(_GETCONN_SLICE, remaining)
            try:
                return pool.getconn(timeout=slice_)
            except psycopg_pool.PoolTimeout:
                remaining -= slice_
                if remaining <= 0:
                    raise

    def request_cancel(self) -> None:  # Trio thread
        with self._lock:
            self.cancel_requested = True
            conn = self._conn
            if conn is None or self._cancel_done is not None:
                return
            done = self._cancel_done = threading.Event()
        trio.lowlevel.start_thread_soon(
            partial(self._send_cancel, conn, done), lambda _: None, name="trio_monitor pg cancel"
        )

    @staticmethod
    def _send_cancel(conn: Conn, done: threading.Event) -> None:
        try:
            conn.cancel_safe(timeout=5.0)
        except Exception:
            logger.debug("PostgreSQL cancel request failed", exc_info=True)
        finally:
            done.set()


class CallRunner:
    """Runs blocking calls on pooled connections, one worker thread each.

    A :class:`trio.CapacityLimiter` as large as the pool bounds the threads,
    so a call never waits in the pool for another call's connection (only
    for a broken one to be replaced). ``timeout`` bounds the wait for a
    connection (PostgreSQL unreachable): then the call raises
    :class:`psycopg_pool.PoolTimeout`. Create it inside the Trio run that
    uses it.
    """

    def __init__(
        self, pool: psycopg_pool.ConnectionPool[Conn], *, max_size: int, timeout: float
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(max_size)
        self._token = trio.lowlevel.current_trio_token()
        self._check_lock = threading.Lock()
        self._check_pending = False

    async def run(self, fn: Callable[[Conn], T]) -> T:
        """``fn(conn)`` on a worker thread; cancellable (see the module docs)."""
        async with self._limiter:
            call = _Call(self._pool, self._timeout, self._check_pool_soon, fn)
            task = trio.lowlevel.current_task()
            token = self._token

            def deliver(result: outcome.Outcome[T]) -> None:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

            trio.lowlevel.start_thread_soon(call.run, deliver, name="trio_monitor pg call")

            raise_cancel: list[trio.lowlevel.RaiseCancelT] = []

            def abort(raise_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                raise_cancel.append(raise_)
                call.request_cancel()
                # The thread always reports back; we wait for it.
                return trio.lowlevel.Abort.FAILED

            try:
                result: T = await trio.lowlevel.wait_task_rescheduled(abort)
            except Exception:
                if raise_cancel:
                    # The statement was aborted (or never sent) because we
                    # were cancelled: report the cancellation, not its echo.
                    raise_cancel[0]()
                raise
            return result

    def _check_pool_soon(self) -> None:
        """Check every idle pooled connection, in a thread; at most one check at a time."""
        with self._check_lock:
            if self._check_pending:
                return
            self._check_pending = True

        def check() -> None:
            try:
                self._pool.check()
            except Exception:
                logger.debug("pool check failed", exc_info=True)
            finally:
                with self._check_lock:
                    self._check_pending = False

        try:
            self._token.run_sync_soon(
                partial(trio.lowlevel.start_thread_soon, check, lambda _: None)
            )
        except trio.RunFinishedError:
            with self._check_lock:
                self._check_pending = False


class Listener:
    """A thread that LISTENs on ``channel`` and calls ``on_notify()`` in Trio.

    ``more`` maps further channels to their own callbacks (one connection
    listens to them all). A callback runs in the Trio thread, once per burst
    of notifications on its channel, and once after every reconnection.
    Create it inside the Trio run; call :meth:`start`, then
    :meth:`wait_ready`, and at the end :meth:`aclose` (which needs a way
    to send one NOTIFY: ``notify(channel)``, blocking).
    """

    def __init__(
        self,
        conninfo: str,
        channel: str,
        on_notify: Callable[[], None],
        more: Mapping[str, Callable[[], None]] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._callbacks: dict[str, Callable[[], None]] = {channel: on_notify, **(more or {})}
        self._token = trio.lowlevel.current_trio_token()
        self._wake_lock = threading.Lock()
        self._wake_pending: set[str] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.stop_channel = f"trio_monitor_stop_{uuid.uuid4().hex}"
        self._thread = threading.Thread(
            target=self._loop, name="trio_monitor pg listener", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    async def wait_ready(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until it listens, or has given up for now."""
        await trio.to_thread.run_sync(self._ready.wait, seconds)

    async def aclose(self, notify: Callable[[str], None]) -> None:
        """Stop the thread; ``notify(channel)`` wakes it at once. Idempotent."""
        self._stop.set()
        if not self._thread.is_alive():
            await trio.lowlevel.checkpoint()
            return

        def poke() -> None:
            try:
                notify(self.stop_channel)
            except Exception:
                logger.debug("could not poke the listener", exc_info=True)

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(poke)
            await trio.to_thread.run_sync(self._thread.join)

    def _wake_from_thread(self, channel: str) -> None:
        with self._wake_lock:
            if channel in self._wake_pending:
                return
            self._wake_pending.add(channel)
        self._token.run_sync_soon(self._wake_in_trio, channel)

    def _wake_in_trio(self, channel: str) -> None:
        with self._wake_lock:
            self._wake_pending.discard(channel)
        self._callbacks[channel]()

    def _loop(self) -> None:
        """LISTEN, wake on NOTIFY, reconnect on loss, stop when asked."""
        failures = 0
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    for channel in (*self._callbacks, self.stop_channel):
                        conn.execute(
                            psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel))
                        )
                    if not first:
                        logger.info("PostgreSQL listener reconnected")
                        # Notifications sent while we were away are lost.
                        for channel in self._callbacks:
                            self._wake_from_thread(channel)
                    first = False
                    failures = 0
                    self._ready.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_LISTEN_SLICE, stop_after=1):
                            if note.channel in self._callbacks:
                                self._wake_from_thread(note.channel)
            except trio.RunFinishedError:
                return
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                failures += 1
                delay = _RECONNECT.delay(failures)
                logger.warning(
                    "PostgreSQL listener lost its connection (%s); reconnecting in %.2fs",
                    exc,
                    delay,
                )
                self._ready.set()  # open() proceeds; polling covers the gap
                self._stop.wait(delay)
            except BaseException:
                logger.exception("PostgreSQL listener crashed; falling back to polling")
                self._ready.set()
                return
