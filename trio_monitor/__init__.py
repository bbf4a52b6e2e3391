"""Structured-concurrency supervision for Trio.

Five components, each opened as an ``async with`` block that owns a
supervisor nursery, so that no task outlives it:

* :func:`open_monitor` - a task monitor that broadcasts task failures.
* :func:`open_runtime` - a bounded background-job runtime with a drain.
* :func:`open_registry` - a registry of named tasks with a two-phase stop.
* :func:`open_supervisor` - restart policies, backoff, hang detection and
  supervision trees.
* :mod:`trio_monitor.jobs` - a persistent job server (SQLite, PostgreSQL).
"""

from ._backoff import Backoff
from ._errors import (
    QueueFull,
    RestartIntensityExceeded,
    RuntimeClosed,
    ShutdownDeadlineExceeded,
    ShutdownTimeout,
    SpawnError,
)
from ._failures import EarlyTermination, Error, FailureReason, Hung, Panic, TaskFailure, TaskInfo
from ._heartbeat import heartbeat
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
from ._supervisor import (
    ChildHandle,
    ChildInfo,
    Restart,
    Strategy,
    Supervisor,
    SupervisorStatistics,
    open_supervisor,
)
from ._token import ShutdownToken

__all__ = [
    "AbortHandle",
    "BackgroundRuntime",
    "Backoff",
    "ChildHandle",
    "ChildInfo",
    "EarlyTermination",
    "Error",
    "FailureReason",
    "Hung",
    "MonitorStatistics",
    "Panic",
    "QueueFull",
    "Restart",
    "RestartIntensityExceeded",
    "RuntimeClosed",
    "RuntimeConfig",
    "RuntimeHandle",
    "RuntimeMetrics",
    "ShutdownDeadlineExceeded",
    "ShutdownTimeout",
    "ShutdownToken",
    "SpawnError",
    "Strategy",
    "Supervisor",
    "SupervisorStatistics",
    "TaskFailure",
    "TaskHandle",
    "TaskInfo",
    "TaskKind",
    "TaskMonitor",
    "TaskRegistry",
    "TaskSummary",
    "heartbeat",
    "open_monitor",
    "open_registry",
    "open_runtime",
    "open_supervisor",
]


document_as_public(globals(), __all__, __name__)

__version__ = "0.1.0"
