"""The dashboard's pages and actions over HTTP, on the storage protocol as it is today."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from trio_monitor import jobs
from trio_monitor.jobs.dashboard import create_app

from .helpers import HTML, client_for, csrf_token, dashboard, job, seed

NOW = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)


async def test_overview_shows_counts_chart_servers_and_failure_rate(storage: jobs.Storage) -> None:
    await seed(storage)
    now = datetime.now(UTC)
    await storage.register_server(
        jobs.ServerInfo("web#1", "web", 4, ["emails"], now - timedelta(hours=1), now)
    )
    await storage.register_server(
        jobs.ServerInfo("old#2", "old", 2, [], now - timedelta(hours=2), now - timedelta(minutes=5))
    )
    counts = await storage.count_by_state()
    async with dashboard(storage) as client:
        page = await client.get("/", headers=HTML)
    assert page.status_code == 200
    html = page.text
    assert f'data-count="succeeded">{counts["succeeded"]:,}<' in html
    assert f'data-count="failed">{counts["failed"]:,}<' in html
    assert '<svg id="throughput-chart"' in html
    assert html.count('class="bar-succeeded"') >= 50  # one bar per minute with jobs
    assert 'class="bar-failed"' in html
    assert 'id="failure-rate">' in html
    assert "web#1" in html
    assert "stale" in html  # old#2 stopped beating five minutes ago
    assert '<a href="/jobs?queue=emails">emails</a>' in html


async def test_jobs_list_filters_and_pages_newest_first(storage: jobs.Storage) -> None:
    created = [
        job(f"m{i % 2}", i, queue=f"q{i % 3}", created_at=NOW + timedelta(seconds=i))
        for i in range(30)
    ]
    for row in created:
        await storage.enqueue(row)
    async with dashboard(storage) as client:
        first = (await client.get("/jobs?limit=25", headers=HTML)).text
        ids = [row.id for row in reversed(created)]
        assert first.index(ids[0]) < first.index(ids[24])
        assert ids[25] not in first
        assert f"before={ids[24]}" in first  # the cursor to the next page
        second = (await client.get(f"/jobs?limit=25&before={ids[24]}", headers=HTML)).text
        assert all(i in second for i in ids[25:])
        assert ids[24] not in second.split("<tbody>")[1]
        filtered = (await client.get("/jobs?queue=q1&method=m0", headers=HTML)).text
        body = filtered.split("<tbody>")[1]
        expected = [r.id for r in created if r.queue == "q1" and r.method == "m0"]
        assert sorted(id_ for id_ in ids if id_ in body) == sorted(expected)
        assert (await client.get("/jobs?state=nope")).status_code == 400
        assert (await client.get("/jobs?limit=7")).status_code == 400


async def test_job_detail_shows_payload_error_attempts_and_timestamps(
    storage: jobs.Storage,
) -> None:
    failed = job(
        "charge",
        {"card": "4242", "nested": {"amount": 5}},
        state=jobs.Failed("Traceback (most recent call last):\nValueError: declined"),
        attempts=3,
    )
    ok = job("charge", [1, 2], state=jobs.Succeeded({"charged": True}, 0.25))
    for row in (failed, ok):
        await storage.enqueue(row)
    async with dashboard(storage) as client:
        html = (await client.get(f"/jobs/{failed.id}", headers=HTML)).text
        assert "&#34;nested&#34;: {\n    &#34;amount&#34;: 5\n  }" in html  # pretty JSON
        assert "Traceback (most recent call last):\nValueError: declined" in html
        assert '<span id="job-attempts">3</span>' in html
        assert "created" in html
        assert 'data-action="retry"' in html
        done = (await client.get(f"/jobs/{ok.id}", headers=HTML)).text
        assert 'id="job-result">{\n  &#34;charged&#34;: true\n}' in done
        assert 'data-action="retry"' not in done
        assert (await client.get("/jobs/missing", headers=HTML)).status_code == 404


async def test_retry_delete_and_bulk_retry(storage: jobs.Storage) -> None:
    failed = [
        job(f"m{i}", i, state=jobs.Failed("x"), queue="a" if i < 3 else "b") for i in range(5)
    ]
    done = job(state=jobs.Succeeded(1, 0.1))
    for row in [*failed, done]:
        await storage.enqueue(row)
    async with dashboard(storage) as client:
        token = await csrf_token(client)
        again = await client.post(f"/jobs/{done.id}/retry", data={"csrf_token": token})
        assert again.headers["location"].endswith("notice=not-retried")
        deleted = await client.post(f"/jobs/{failed[0].id}/delete", data={"csrf_token": token})
        assert deleted.headers["location"].endswith("notice=deleted")
        page = await client.get(deleted.headers["location"], headers=HTML)
        assert "The job was deleted." in page.text
        bulk = await client.post("/jobs/retry-failed", data={"csrf_token": token, "queue": "b"})
        assert bulk.status_code == 303
    states = {row.id: (await storage.get(row.id)).state.name for row in [*failed, done]}  # type: ignore[union-attr]
    assert states[failed[0].id] == "deleted"
    assert [states[r.id] for r in failed[1:]] == ["failed", "failed", "enqueued", "enqueued"]
    assert states[done.id] == "succeeded"


async def test_bulk_retry_pages_through_more_than_one_batch(storage: jobs.Storage) -> None:
    failed = [job("m", i, state=jobs.Failed("x")) for i in range(1234)]
    await storage.enqueue_many(failed)
    async with dashboard(storage) as client:
        token = await csrf_token(client)
        response = await client.post("/jobs/retry-failed", data={"csrf_token": token})
        assert response.status_code == 303
    assert (await storage.count_by_state()) == {"enqueued": 1234}


async def test_abort_pause_and_resume_act_through_the_client(storage: jobs.Storage) -> None:
    queued = job()
    await storage.enqueue(queued)
    async with dashboard(storage) as client:
        token = await csrf_token(client)
        page = (await client.get(f"/jobs/{queued.id}", headers=HTML)).text
        assert 'data-action="abort"' in page  # every action is offered
        response = await client.post(f"/jobs/{queued.id}/abort", data={"csrf_token": token})
        assert response.status_code == 303
        stored = await storage.get(queued.id)
        assert stored is not None
        assert isinstance(stored.state, jobs.Aborted)
        client_ = jobs.Client(storage)
        response = await client.post("/queues/default/pause", data={"csrf_token": token})
        assert response.status_code == 303
        assert [q.paused for q in await client_.queues() if q.name == "default"] == [True]
        response = await client.post("/queues/default/resume", data={"csrf_token": token})
        assert response.status_code == 303
        assert [q.paused for q in await client_.queues() if q.name == "default"] == [False]


async def test_queues_servers_recurring_pages(storage: jobs.Storage) -> None:
    await seed(storage)
    await storage.upsert_recurring(
        jobs.RecurringJob("nightly", "0 0 3 * * *", "report", {"k": 1}, "reports", NOW)
    )
    async with dashboard(storage) as client:
        queues = (await client.get("/queues", headers=HTML)).text
        assert 'data-queue="payments"' in queues
        servers = (await client.get("/servers", headers=HTML)).text
        assert "No server with heartbeats is running." in servers
        recurring = (await client.get("/recurring", headers=HTML)).text
        assert "nightly" in recurring
        assert "0 0 3 * * *" in recurring


async def test_big_counts_are_reread_at_most_every_few_seconds(
    storage: jobs.Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_monitor.jobs.dashboard import _app

    monkeypatch.setattr(_app, "COUNTS_EXACT_LIMIT", 1)
    await storage.enqueue_many([job(), job()])
    async with dashboard(storage) as client:
        first = (await client.get("/", headers=HTML)).text
        assert "the counts are estimates" in first
        assert "from the last reading" not in first
        await storage.enqueue(job())
        second = (await client.get("/", headers=HTML)).text
        assert "from the last reading" in second
        assert 'data-count="enqueued">2<' in second  # not re-read yet
        monkeypatch.setattr(_app, "COUNTS_MAX_AGE", 0.0)
        third = (await client.get("/", headers=HTML)).text
        assert 'data-count="enqueued">3<' in third


async def test_metrics_and_healthz(storage: jobs.Storage) -> None:
    await storage.enqueue(job(state=jobs.Failed("x"), queue="emails"))
    async with dashboard(storage) as client:
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'trio_monitor_jobs{queue="emails",state="failed"} 1.0' in metrics.text
        assert 'trio_monitor_jobs{queue="emails",state="succeeded"} 0.0' in metrics.text
        health = await client.get("/healthz")
        assert health.json() == {"status": "ok", "storage": "ok"}


async def test_mounted_under_a_prefix_links_and_cookies_follow(storage: jobs.Storage) -> None:
    failed = job(state=jobs.Failed("x"))
    await storage.enqueue(failed)
    outer = Starlette(routes=[Mount("/ops/jobs", app=create_app(storage))])
    async with client_for(outer) as client:
        page = await client.get("/ops/jobs/", headers=HTML)
        assert page.status_code == 200
        assert 'href="/ops/jobs/static/dashboard.css"' in page.text
        assert 'href="/ops/jobs/jobs"' in page.text
        assert "Path=/ops/jobs" in page.headers["set-cookie"]
        token = await csrf_token(client, "/ops/jobs/jobs?state=failed")
        response = await client.post(
            f"/ops/jobs/jobs/{failed.id}/retry", data={"csrf_token": token}
        )
        assert response.headers["location"] == f"/ops/jobs/jobs/{failed.id}?notice=retried"
