"""The PostgreSQL backend (``postgresql://``): the storage, its schema, its call machinery.

Importing it imports psycopg; :func:`~trio_monitor.jobs.open_storage` does so
only for a ``postgresql://`` URL.
"""

try:
    import psycopg  # noqa: F401  # pyright: ignore[reportUnusedImport]
    import psycopg_pool  # noqa: F401  # pyright: ignore[reportUnusedImport]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PostgreSQL storage needs psycopg 3 and psycopg_pool: install the "
        "'postgres' extra (pip install 'trio-monitor[postgres]')"
    ) from exc

from ._schema import MIGRATIONS, SCHEMA_VERSION
from ._storage import CHANNEL, PostgresStorage, open, schema_status

__all__ = ["CHANNEL", "MIGRATIONS", "SCHEMA_VERSION", "PostgresStorage", "open", "schema_status"]
