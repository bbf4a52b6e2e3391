"""The raw floor both SQLite benchmarks measure against: stdlib ``sqlite3``
by hand, one thread, no Trio, two transactions per job."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def raw_round(path: Path, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT, payload TEXT, result TEXT)"
    )
    conn.execute("CREATE INDEX jobs_state ON jobs (state, id)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (state, payload) VALUES ('enqueued', ?)",
        [(f'{{"n":{i}}}',) for i in range(n)],
    )
    conn.execute("COMMIT")
    done = 0
    start = time.perf_counter()
    while True:
        row = conn.execute(
            "UPDATE jobs SET state = 'processing' WHERE id ="
            " (SELECT id FROM jobs WHERE state = 'enqueued' ORDER BY id LIMIT 1)"
            " RETURNING id, payload"
        ).fetchone()
        if row is None:
            break
        conn.execute("UPDATE jobs SET state = 'succeeded', result = 'null' WHERE id = ?", (row[0],))
        done += 1
    elapsed = time.perf_counter() - start
    conn.close()
    assert done == n, (done, n)
    return n / elapsed
