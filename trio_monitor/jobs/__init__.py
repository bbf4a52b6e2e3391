"""A persistent background-job server on Trio.

Jobs survive restarts; a job claimed by a worker that died is run again
(at-least-once); several servers can share one storage. Storage is embedded
SQLite by default, PostgreSQL when you outgrow one machine, or memory for
tests.
"""

from .._public import document_as_public
from ._client import Client
from ._clock import TrioWallClock, WallClock
from ._model import (
    Aborted,
    AwaitingRetry,
    Deleted,
    Enqueued,
    Failed,
    Job,
    JobState,
    Processing,
    Progress,
    QueueInfo,
    RecurringJob,
    Scheduled,
    ServerInfo,
    Succeeded,
    Transition,
    Transitioned,
)
from ._processor import RetryPolicy
from ._server import JobServer, ServerConfig, ServerError
from ._storage import (
    SchemaStatus,
    SchemaVersionError,
    Storage,
    check_schema,
    migrate,
    open_storage,
)
from ._workers import WorkerContext, WorkerRegistry

__all__ = [
    "Aborted",
    "AwaitingRetry",
    "Client",
    "Deleted",
    "Enqueued",
    "Failed",
    "Job",
    "JobServer",
    "JobState",
    "Processing",
    "Progress",
    "QueueInfo",
    "RecurringJob",
    "RetryPolicy",
    "Scheduled",
    "SchemaStatus",
    "SchemaVersionError",
    "ServerConfig",
    "ServerError",
    "ServerInfo",
    "Storage",
    "Succeeded",
    "Transition",
    "Transitioned",
    "TrioWallClock",
    "WallClock",
    "WorkerContext",
    "WorkerRegistry",
    "check_schema",
    "migrate",
    "open_storage",
]


document_as_public(globals(), __all__, __name__)
