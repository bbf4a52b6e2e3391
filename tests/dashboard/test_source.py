"""The dashboard's data source: paging, counts and actions over the storage protocol."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_monitor import jobs
from trio_monitor.jobs.dashboard import StorageSource, source_for

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
            for source in {
                type(s): s for s in (StorageSource(storage), source_for(storage))
            }.values():
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


async def test_counts_by_queue_and_state_until_the_per_queue_limit() -> None:
    async with jobs.open_storage("memory://") as storage:
        await storage.enqueue_many(
            [job(queue="a"), job(queue="a", state=jobs.Failed("x")), job(queue="b")]
        )
        source = StorageSource(storage)
        assert await source.counts() == {
            ("a", "enqueued"): 1,
            ("a", "failed"): 1,
            ("b", "enqueued"): 1,
        }
        queues = await source.queues()
        assert [(q.name, dict(q.counts), q.paused) for q in queues] == [
            ("a", {"enqueued": 1, "failed": 1}, False),
            ("b", {"enqueued": 1}, False),
        ]
        source.PER_QUEUE_LIMIT = 2  # above it, counts by state only
        assert await source.counts() == {("*", "enqueued"): 2, ("*", "failed"): 1}


async def test_retry_and_delete_are_compare_and_swap() -> None:
    async with jobs.open_storage("memory://") as storage:
        failed, running = (
            job(state=jobs.Failed("x"), attempts=3),
            job(state=jobs.Processing(NOW, "w", "s")),
        )
        await storage.enqueue_many([failed, running])
        source = StorageSource(storage)
        assert await source.retry(failed.id)
        assert not await source.retry(failed.id)  # it is Enqueued now
        assert not await source.retry(running.id)
        assert not await source.retry("missing")
        again = await storage.get(failed.id)
        assert again is not None
        assert isinstance(again.state, jobs.Enqueued)
        assert again.attempts == 0
        assert await source.delete(running.id)
        assert not await source.delete(running.id)
        assert not await source.delete("missing")
        gone = await storage.get(running.id)
        assert gone is not None
        assert isinstance(gone.state, jobs.Deleted)
        assert gone.expires_at is not None
