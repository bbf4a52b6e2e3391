"""An application's job workers: the example of docs/howto/testing.rst.

Three kinds of job, as most applications have:

* ``send_email``: talks to an SMTP relay that fails now and then, so it is
  retried with growing backoffs;
* ``nightly_report``: a recurring job at 02:00 UTC every day;
* ``sync_customer``: calls an external HTTP API that allows one request at
  a time and 10 a minute, so its queue is limited (SPEC §6 queue limits).

The services the workers use (``services.mailer``, ``services.crm``) are
set up by the application at start-up and replaced by fakes in tests.
"""

from __future__ import annotations

from typing import Any, Protocol

from trio_monitor import jobs

workers = jobs.WorkerRegistry()

#: Retries: 5 attempts, 5 minutes apart at first, doubling up to an hour.
RETRY_POLICY = jobs.RetryPolicy(max_attempts=5, initial_delay=300.0, max_delay=3600.0)
#: The API's own limits, which the "crm" queue must respect.
CRM_QUEUE = "crm"
CRM_MAX_RUNNING = 1
CRM_RATE = (10, 60.0)
SERVER_CONFIG = jobs.ServerConfig(server_name="app", queues=["default", CRM_QUEUE])


class MailError(Exception):
    """The SMTP relay refused a message (temporarily, we hope)."""


class Mailer(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None: ...


class CRM(Protocol):
    async def push_customer(self, customer: dict[str, Any]) -> None: ...
    async def count_customers(self) -> int: ...


class Services:
    """What the workers talk to: the application sets these at start-up."""

    mailer: Mailer
    crm: CRM


services = Services()


@workers.worker("send_email")
async def send_email(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    email = job.payload
    await services.mailer.send(email["to"], email["subject"], email.get("body", ""))
    return {"to": job.payload["to"]}


@workers.worker("nightly_report")
async def nightly_report(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    customers = await services.crm.count_customers()
    await services.mailer.send("ops@example.org", "Nightly report", f"{customers} customers")
    return {"customers": customers}


@workers.worker("sync_customer")
async def sync_customer(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await services.crm.push_customer(job.payload)
    return None


async def install_schedules(server: jobs.JobServer) -> None:
    """Register the recurring jobs (run once at deployment, idempotent)."""
    await server.schedule_recurring("nightly-report", "0 0 2 * * *", "nightly_report", {})


async def install_queue_limits(client: Any) -> None:
    """Limit the CRM queue to what the API allows (needs ``jobs.Client``, SPEC §6)."""
    await client.set_queue_limits(CRM_QUEUE, max_running=CRM_MAX_RUNNING, rate=CRM_RATE)
