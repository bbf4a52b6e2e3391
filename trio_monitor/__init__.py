"""Structured-concurrency supervision for Trio.

Four components, each opened as an ``async with`` block that owns a
supervisor nursery, so that no task outlives it:

* :func:`open_monitor` - a task monitor that broadcasts task failures.
* :func:`open_runtime` - a bounded background-job runtime with a drain.
* :func:`open_registry` - a registry of named tasks with a two-phase stop.
* :mod:`trio_monitor.jobs` - a persistent job server (SQLite, PostgreSQL).
"""

from ._backoff import Backoff
from ._errors import (
    QueueFull,
    RuntimeClosed,
    ShutdownDeadlineExceeded,
    ShutdownTimeout,
    SpawnError,
)
from ._failures import EarlyTermination, Error, FailureReason, Panic, TaskFailure, TaskInfo
from ._monitor import MonitorStatistics, TaskHandle, TaskMonitor, open_monitor
from ._public import document_as_public
from ._registry import AbortHandle, TaskKind, TaskRegistry, TaskSummary, open_registry
from ._runtime import (
    BackgroundRuntime,
    RuntimeConfig,
    RuntimeHandle,
    RuntimeMetrics,
    open_runtime,
)
from ._token import ShutdownToken

__all__ = [
    "AbortHandle",
    "BackgroundRuntime",
    "Backoff",
    "EarlyTermination",
    "Error",
    "FailureReason",
    "MonitorStatistics",
    "Panic",
    "QueueFull",
    "RuntimeClosed",
    "RuntimeConfig",
    "RuntimeHandle",
    "RuntimeMetrics",
    "ShutdownDeadlineExceeded",
    "ShutdownTimeout",
    "ShutdownToken",
    "SpawnError",
    "TaskFailure",
    "TaskHandle",
    "TaskInfo",
    "TaskKind",
    "TaskMonitor",
    "TaskRegistry",
    "TaskSummary",
    "open_monitor",
    "open_registry",
    "open_runtime",
]


document_as_public(globals(), __all__, __name__)

__version__ = "0.1.0"
