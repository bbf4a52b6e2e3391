"""Tests of the how-to's application workers (docs/howto/testing.rst includes this file).

They run against the real job server in virtual time: an hour's delay, a
day of retries or a week of nightly reports take milliseconds of wall time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from tests.testing import howto_app as app  # your application's jobs module
from trio_monitor import jobs, testing

#: Run a test once on memory:// and once on a fresh SQLite file.
on_memory_and_sqlite = pytest.mark.parametrize(
    "job_storage_url", ["memory://", "sqlite"], indirect=True
)
#: Queue limits come with jobs.Client (SPEC §6).


# -- fakes for the services the workers use ---------------------------------


class FakeMailer:
    """Records mail; fails the first ``failures`` sends like a flaky relay."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []  # (to, subject, trio time)
        self.failures = 0

    async def send(self, to: str, subject: str, body: str) -> None:
        await trio.sleep(0.05)  # a network round trip, in virtual time
        if self.failures:
            self.failures -= 1
            raise app.MailError("451 try again later")
        self.sent.append((to, subject, trio.current_time()))


class FakeCRM:
    """Records pushes, and how many ran at once."""

    def __init__(self) -> None:
        self.pushed: list[tuple[int, float]] = []  # (customer id, trio time)
        self.running = 0
        self.most_running = 0

    async def push_customer(self, customer: dict[str, Any]) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await trio.sleep(1.0)  # a slow API
            self.pushed.append((customer["id"], trio.current_time()))
        finally:
            self.running -= 1

    async def count_customers(self) -> int:
        return 42


# -- fixtures ---------------------------------------------------------------


@pytest.fixture
def job_workers() -> jobs.WorkerRegistry:
    return app.workers


@pytest.fixture
def job_server_options() -> dict[str, Any]:
    return {"config": app.SERVER_CONFIG, "retry_policy": app.RETRY_POLICY}


@pytest.fixture
def mailer(monkeypatch: pytest.MonkeyPatch) -> FakeMailer:
    fake = FakeMailer()
    monkeypatch.setattr(app.services, "mailer", fake, raising=False)
    return fake


@pytest.fixture
def crm(monkeypatch: pytest.MonkeyPatch) -> FakeCRM:
    fake = FakeCRM()
    monkeypatch.setattr(app.services, "crm", fake, raising=False)
    return fake


# -- the email sender --------------------------------------------------------


@on_memory_and_sqlite
async def test_a_delayed_email_is_sent_an_hour_later(
    job_server: testing.TestServer, job_client: Any, mailer: FakeMailer, autojump_clock: MockClock
) -> None:
    start = trio.current_time()
    await job_client.enqueue("send_email", {"to": "ann@example.org", "subject": "Hi"}, delay=3600)
    await job_server.drain()
    [(to, subject, sent_at)] = mailer.sent
    assert (to, subject) == ("ann@example.org", "Hi")
    assert 3600 <= sent_at - start < 3610


@on_memory_and_sqlite
async def test_a_flaky_relay_is_retried_until_it_works(
    job_server: testing.TestServer, job_client: Any, mailer: FakeMailer, autojump_clock: MockClock
) -> None:
    mailer.failures = 2
    start = trio.current_time()
    job_id = await job_client.enqueue("send_email", {"to": "bob@example.org", "subject": "Hi"})
    await job_server.drain()
    job = await job_server.storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Succeeded)
    assert job.state.result == {"to": "bob@example.org"}
    assert job.attempts == 3
    # Two backoffs: 300 s, then 600 s (each +-10% jitter).
    assert 0.9 * 900 <= mailer.sent[0][2] - start <= 1.1 * 900 + 10


async def test_a_relay_that_stays_down_fails_the_job(
    job_server: testing.TestServer, job_client: Any, mailer: FakeMailer, autojump_clock: MockClock
) -> None:
    mailer.failures = 100
    job_id = await job_client.enqueue("send_email", {"to": "cy@example.org", "subject": "Hi"})
    await job_server.drain()
    job = await job_server.storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Failed)
    assert "MailError: 451 try again later" in job.state.error
    assert job.attempts == app.RETRY_POLICY.max_attempts


async def test_send_email_inline(mailer: FakeMailer) -> None:
    # No server: one run through the server's middleware and timeout path.
    result = await testing.run_job(
        app.workers, "send_email", {"to": "d@example.org", "subject": "S"}
    )
    assert result == {"to": "d@example.org"}
    mailer.failures = 1
    with pytest.raises(app.MailError, match="451"):
        await testing.run_job(app.workers, "send_email", {"to": "d@example.org", "subject": "S"})


# -- the nightly report ------------------------------------------------------


@on_memory_and_sqlite
async def test_the_report_goes_out_every_night_at_two(
    job_server: testing.TestServer, mailer: FakeMailer, crm: FakeCRM, autojump_clock: MockClock
) -> None:
    await app.install_schedules(job_server.server)
    start = job_server.server.now()
    await job_server.drain(until=start + timedelta(days=7))
    testing.assert_enqueued(job_server, "nightly_report", count=7)
    reports = [sent for sent in mailer.sent if sent[1] == "Nightly report"]
    assert len(reports) == 7
    for job in job_server.enqueued:
        assert (job.created_at.hour, job.created_at.minute) == (2, 0)


async def test_drain_alone_does_not_run_the_next_report(
    job_server: testing.TestServer, mailer: FakeMailer, autojump_clock: MockClock
) -> None:
    await app.install_schedules(job_server.server)
    await job_server.drain()
    testing.assert_enqueued(job_server, "nightly_report", count=0)
    assert mailer.sent == []


# -- the external API, rate-limited by its queue ------------------------------


async def test_customers_are_pushed_to_the_crm(
    job_server: testing.TestServer, job_client: Any, crm: FakeCRM, autojump_clock: MockClock
) -> None:
    for customer in range(3):
        await job_client.enqueue("sync_customer", {"id": customer}, queue=app.CRM_QUEUE)
    testing.assert_enqueued(job_client, "sync_customer", queue=app.CRM_QUEUE, count=3)
    await job_server.drain()
    assert sorted(customer for customer, _ in crm.pushed) == [0, 1, 2]


@on_memory_and_sqlite
async def test_the_crm_queue_respects_the_api_limits(
    job_server: testing.TestServer, job_client: Any, crm: FakeCRM, autojump_clock: MockClock
) -> None:
    await app.install_queue_limits(job_client)
    for customer in range(25):
        await job_client.enqueue("sync_customer", {"id": customer}, queue=app.CRM_QUEUE)
    await job_server.drain()
    assert len(crm.pushed) == 25
    assert crm.most_running == app.CRM_MAX_RUNNING
    # No window of 60 s saw more than 10 starts (each push takes 1 s).
    n, window = app.CRM_RATE
    starts = sorted(at - 1.0 for _, at in crm.pushed)
    pairs = zip(starts, starts[n:], strict=False)
    assert all(later - earlier >= window for earlier, later in pairs)
