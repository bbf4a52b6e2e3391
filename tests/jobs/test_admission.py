"""Admission.closed: when a claim may stop looking further down a queue's jobs."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime

from trio_monitor import jobs
from trio_monitor.jobs._backends._rows import Admission, QueueRow


def test_a_queue_is_closed_when_paused_or_at_a_limit_whatever_the_lock() -> None:
    settings = {
        "paused": QueueRow("paused", True, None, None, None),
        "full": QueueRow("full", False, 2, None, None),
        "room": QueueRow("room", False, 3, None, None),
        "rated": QueueRow("rated", False, None, 1, 10.0),
    }
    admission = Admission(settings, {"full": 2, "room": 2}, {"rated": 1}, {"k"})
    assert admission.closed("paused")
    assert admission.closed("full")
    assert admission.closed("rated")
    assert not admission.closed("room")
    assert not admission.closed("unlimited")  # no settings: never closed
    assert admission.admit("room", None)
    assert admission.closed("room")  # the admitted job counts
    # A held lock refuses one job, not its queue.
    assert not admission.admit("unlimited", "k")
    assert not admission.closed("unlimited")


async def test_a_full_queue_claims_nothing_and_another_queue_still_claims() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with jobs.open_storage(f"sqlite:///{tmp}/jobs.db") as storage:
            client = jobs.Client(storage)
            await client.set_queue_limits("limited", max_running=1)
            await storage.enqueue_many(
                [jobs.Job.new("m", i, queue="limited") for i in range(300)]
                + [jobs.Job.new("m", i, queue="free") for i in range(3)]
            )
            now = datetime.now(UTC)
            ids = [f"w{i}" for i in range(8)]
            first = await storage.claim(
                queues=["limited"], worker_ids=ids, server_name="s", now=now
            )
            assert len(first) == 1
            # Full: the claim stops at the first batch of candidates (nothing
            # further down could start), and gets nothing.
            again = await storage.claim(
                queues=["limited"], worker_ids=ids, server_name="s", now=now
            )
            assert again == []
            both = await storage.claim(
                queues=["limited", "free"], worker_ids=ids, server_name="s", now=now
            )
            assert sorted(job.queue for job in both) == ["free"] * 3
