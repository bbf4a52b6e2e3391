"""The SQLite backend (``sqlite:///path``): the storage, its schema, its connection thread."""

from ._schema import MIGRATIONS, SCHEMA_VERSION
from ._storage import DEFAULT_BUSY_TIMEOUT, SQLiteStorage, open, schema_status

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLiteStorage",
    "open",
    "schema_status",
]
