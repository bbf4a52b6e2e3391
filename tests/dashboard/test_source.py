"""The dashboard's data source: jobs.Client, paged newest first by keyset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_monitor import jobs
from trio_monitor.jobs.dashboard import source_for

from .helpers import job

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STATES = [jobs.Enqueued(NOW), jobs.Failed("x"), jobs.Succeeded(1, 0.1)]

rows = st.lists(
    st.tuples(st.sampled_from(range(3)), st.sampled_from(["a", "b"]), st.sampled_from(["m", "n"])),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    rows=rows,
    page_size=st.integers(1, 7),
    state=st.sampled_from([None, jobs.Enqueued, jobs.Failed]),
    queue=st.sampled_from([None, "a"]),
    method=st.sampled_from([None, "n"]),
)
def test_cursor_pages_are_the_filtered_listing_newest_first(
    rows: list[tuple[int, str, str]],
    page_size: int,
    state: type[jobs.JobState] | None,
    queue: str | None,
    method: str | None,
) -> None:
    async def main() -> None:
        async with jobs.open_storage("memory://") as storage:
            stored = [
                job(m, i, state=STATES[s], queue=q, created_at=NOW + timedelta(seconds=i))
                for i, (s, q, m) in enumerate(rows)
            ]
            await storage.enqueue_many(stored)
            source = source_for(storage)
            seen: list[str] = []
            cursor: str | None = None
            while True:
                page = await source.list_jobs(
                    state=state, queue=queue, method=method, limit=page_size, before=cursor
                )
                assert len(page) <= page_size
                seen += [row.id for row in page]
                if len(page) < page_size:
                    break
                cursor = page[-1].id
            expected = [
                r.id
                for r in reversed(stored)
                if (state is None or isinstance(r.state, state))
                and (queue is None or r.queue == queue)
                and (method is None or r.method == method)
            ]
            assert seen == expected

    trio.run(main)


async def test_the_source_is_the_job_control_client() -> None:
    async with jobs.open_storage("memory://") as storage:
        source = source_for(storage)
        assert isinstance(source, jobs.Client)
        assert source.storage is storage
