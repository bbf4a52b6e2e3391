"""The storage backends, one module or package each.

:data:`trio_monitor.jobs._storage.BACKENDS` maps a URL scheme to its
backend; a backend is imported only when a URL of its scheme is opened.
Each backend module provides ``async open(url) -> Storage`` and ``async
schema_status(url) -> SchemaStatus``, builds its rows with
:mod:`._rows` (the rules every backend shares) and passes
``tests/jobs/test_storage_contract.py``. Adding a backend: a new folder here,
a line in ``BACKENDS``, an entry in ``tests/jobs/storage_backends.py``.
"""
