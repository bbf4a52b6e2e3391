"""One SQLite connection on its own thread, with writes combined into transactions.

:class:`ConnectionThread` owns a connection and a dedicated thread that is
the only user of it. Trio tasks hand it calls (:meth:`~ConnectionThread.read`,
:meth:`~ConnectionThread.write`) and each waits for its own call only. The
thread takes everything queued at once: writes queued together run in one
``BEGIN IMMEDIATE`` transaction, each in its own savepoint (a write that
raises is rolled back alone, and its error goes to its own caller), so a
job server's claim and its batch of outcomes usually share one commit. The
first write of a transaction needs no savepoint: if it fails, the
transaction, which holds its changes only, is rolled back and begun again.

No Trio task carries anybody else's call: the batch runs on the storage's
own thread, and results come back to each caller through its own event.
That is what keeps a cancellation with its owner. The rule for a cancelled
caller:

* its call was still queued: it is removed, nothing happens, and the caller
  gets :class:`trio.Cancelled` at once;
* the thread had already taken it: it commits or rolls back with its batch
  (the caller waits for that, shielded, as for any uncancellable thread
  call), its result or its own error is returned, and the caller sees
  :class:`trio.Cancelled` at its next checkpoint.

Either way no other caller's wait, write or outcome changes. After
:meth:`~ConnectionThread.aclose` starts, new calls raise
:class:`trio.ClosedResourceError`; the calls already accepted still run, then
the connection is closed on its thread.
"""

from __future__ import annotations

import contextlib
import copy
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

from ..._io_hold import io_in_flight

__all__ = ["ConnectionThread", "transaction"]

_T = TypeVar("_T")


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """``fn(conn)`` in one BEGIN IMMEDIATE transaction, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


class _Call(Generic[_T]):
    """One caller's call: queued, then taken by the thread, then done."""

    __slots__ = ("done", "fn", "result", "taken", "write")

    def __init__(self, fn: Callable[[sqlite3.Connection], _T], write: bool) -> None:
        self.fn = fn
        self.write = write
        self.taken = False  # set by the thread, under the lock
        self.result: outcome.Outcome[_T] | None = None
        self.done = trio.Event()


class ConnectionThread:
    """Runs calls on one SQLite connection, on one thread of its own.

    Create it inside a Trio run; it starts its thread at once and owns
    ``conn`` from then on (it closes it in :meth:`aclose`). ``locked_hint``
    is appended to "database is locked" errors, to say what to change.
    """

    def __init__(
        self, conn: sqlite3.Connection, *, name: str = "sqlite", locked_hint: str = ""
    ) -> None:
        self._conn = conn
        self._locked_hint = locked_hint
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[_Call[Any]] = []
        self._closing = False
        self._finished = trio.Event()
        self._thread = threading.Thread(target=self._loop, name=f"trio_monitor {name}", daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` has started."""
        return self._closing

    async def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn(conn)`` on the thread, outside any transaction (one statement's snapshot)."""
        return await self._submit(_Call(fn, write=False))

    async def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn(conn)`` on the thread, inside a write transaction shared with other writes.

        Anything ``fn`` raises rolls back ``fn``'s own changes only and is
        raised here; a failed BEGIN or COMMIT fails every write of that
        transaction (nothing was written), each caller with its own copy of
        the error.
        """
        return await self._submit(_Call(fn, write=True))

    async def _submit(self, call: _Call[_T]) -> _T:
        with self._lock:
            if self._closing:
                raise trio.ClosedResourceError("this SQLite storage is closed")
            self._queue.append(call)
            if len(self._queue) == 1:
                self._wake.notify()
        # The storage's one thread hop: a test clock must not jump over it.
        with io_in_flight():
            try:
                await call.done.wait()
            except trio.Cancelled:
                with self._lock:
                    if not call.taken:  # still queued: it never happens
                        self._queue.remove(call)
                        raise
                # The thread has it: wait for its outcome (see the module docs).
                with trio.CancelScope(shield=True):
                    await call.done.wait()
        assert call.result is not None  # set before ``done``
        return call.result.unwrap()

    async def aclose(self) -> None:
        """Refuse new calls, finish the accepted ones, close the connection. Idempotent."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        with trio.CancelScope(shield=True):
            await self._finished.wait()

    # -- the thread ------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closing:
                        self._wake.wait()
                    if not self._queue:
                        return  # closing, and everything accepted has run
                    batch, self._queue = self._queue, []
                    for call in batch:
                        call.taken = True
                self._run(batch)
                self._deliver(self._finish, batch)
        finally:
            try:
                self._conn.close()
            finally:
                self._deliver(self._finished.set)

    def _deliver(self, fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # nobody is left to tell
            self._token.run_sync_soon(fn, *args)

    @staticmethod
    def _finish(batch: list[_Call[Any]]) -> None:
        for call in batch:
            call.done.set()

    def _run(self, batch: list[_Call[Any]]) -> None:
        """Run ``batch`` in order: each read alone, each run of writes in one transaction."""
        start = 0
        while start < len(batch):
            if not batch[start].write:
                call = batch[start]
                call.result = outcome.capture(call.fn, self._conn)
                start += 1
                continue
            end = start
            while end < len(batch) and batch[end].write:
                end += 1
            self._run_writes(batch[start:end])
            start = end

    def _run_writes(self, writes: list[_Call[Any]]) -> None:
        results: list[outcome.Outcome[Any]] = []

        def run_each(conn: sqlite3.Connection) -> None:
            # Each write in a savepoint of its own, but the first: until it
            # is done, the transaction holds its changes only, so rolling
            # back the transaction undoes exactly them (two statements saved
            # in every transaction, a lone write's only savepoint).
            first = True
            for call in writes:
                if not first:
                    conn.execute("SAVEPOINT write")
                try:
                    results.append(outcome.Value(call.fn(conn)))
                except BaseException as exc:  # its own: the others' writes go on
                    results.append(outcome.Error(exc))
                    if first:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        conn.execute("BEGIN IMMEDIATE")  # for the writes after it
                        continue
                    conn.execute("ROLLBACK TO write")
                if not first:
                    conn.execute("RELEASE write")
                first = False

        try:
            transaction(self._conn, run_each)
        except BaseException as exc:  # nothing of this transaction was written
            for index, call in enumerate(writes):
                failed = results[index] if index < len(results) else None
                # A write that had failed on its own keeps its own error.
                if isinstance(failed, outcome.Error):
                    call.result = failed
                else:
                    call.result = outcome.Error(self._own_copy(exc))
            return
        for call, result in zip(writes, results, strict=True):
            call.result = result

    def _own_copy(self, exc: BaseException) -> BaseException:
        """A copy of a transaction-wide error for one caller (raising one object in
        several tasks would tangle their tracebacks), made clearer if it is a lock."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc) and self._locked_hint:
            clear = sqlite3.OperationalError(f"{exc}: {self._locked_hint}")
            clear.__cause__ = exc
            return clear
        mine = copy.copy(exc)
        mine.__cause__ = exc
        return mine
