"""Shared pieces of the dashboard tests: seeded jobs and an in-process HTTP client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from trio_monitor import jobs
from trio_monitor.jobs.dashboard import create_app

#: Strings that break out of element content, attributes and scripts if not escaped.
HOSTILE = (
    '<script>window.__pwned = "script"</script>'
    '"><img src=x onerror="window.__pwned=\'img\'">'
    "' onmouseover='window.__pwned=1' x='"
    "</pre></textarea><svg onload=window.__pwned=1>"
)

HTML = {"accept": "text/html"}

_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def job(
    method: str = "send_email",
    payload: Any = None,
    *,
    state: jobs.JobState | None = None,
    queue: str = "default",
    created_at: datetime | None = None,
    attempts: int = 1,
) -> jobs.Job:
    """A job to store as given (any state)."""
    new = jobs.Job.new(method, payload, queue, now=created_at)
    new.attempts = attempts
    if state is not None:
        new.state = state
    return new


async def seed(storage: jobs.Storage, *, now: datetime | None = None) -> dict[str, str]:
    """A realistic mix of jobs over the last hour; returns the ids of some by role."""
    now = now or datetime.now(UTC)
    ids: dict[str, str] = {}
    rows: list[jobs.Job] = []
    for minute in range(55):
        at = now - timedelta(minutes=55 - minute, seconds=5)
        for n in range(minute % 7 + 2):
            rows.append(
                job(
                    "send_email" if n % 2 else "render_report",
                    {"to": f"user{n}@example.org", "minute": minute},
                    state=jobs.Succeeded({"sent": True}, 0.05 * n, finished_at=at),
                    queue="emails" if n % 2 else "reports",
                    created_at=at,
                )
            )
        if minute % 9 == 4:
            rows.append(
                job(
                    "render_report",
                    {"report": minute},
                    state=jobs.Failed(
                        "Traceback (most recent call last):\n  ...\nValueError: no data",
                        finished_at=at,
                    ),
                    queue="reports",
                    created_at=at,
                    attempts=3,
                )
            )
    declined_at = now - timedelta(minutes=3)
    failed = job(
        "charge_card",
        {"card": "4242", "amount": 1999},
        state=jobs.Failed(
            "PaymentDeclined: card 4242 declined (insufficient funds)", finished_at=declined_at
        ),
        queue="payments",
        created_at=declined_at,
        attempts=3,
    )
    rows.append(failed)
    ids["failed"] = failed.id
    waiting = job("send_email", {"to": "ada@example.org"}, queue="emails", attempts=0)
    rows.append(waiting)
    ids["enqueued"] = waiting.id
    for job_ in rows:
        await storage.enqueue(job_)
    return ids


@asynccontextmanager
async def client_for(
    app: Any, *, client: tuple[str, int] = ("127.0.0.1", 5000), **kwargs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to ``app`` in-process (no socket); app errors become 500s."""
    transport = httpx.ASGITransport(app, raise_app_exceptions=False, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard", **kwargs) as c:
        yield c


@asynccontextmanager
async def dashboard(storage: jobs.Storage, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``create_app(storage, **options)``."""
    async with client_for(create_app(storage, **options)) as c:
        yield c


async def csrf_token(
    client: httpx.AsyncClient, path: str = "/jobs?state=failed", **kwargs: Any
) -> str:
    """The CSRF token of the forms on ``path`` (the client keeps the cookie it comes with)."""
    page = await client.get(path, headers=HTML, **kwargs)
    found = _CSRF.search(page.text)
    assert found is not None, f"no CSRF token on {path}: {page.status_code} {page.text[:300]}"
    return found.group(1)
