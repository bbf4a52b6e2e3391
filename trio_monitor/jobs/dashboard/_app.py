"""The dashboard's ASGI app: pages, actions, ``/metrics`` and ``/healthz``.

Pages are rendered on the server by Jinja2 with autoescaping on, so every
piece of job data (payloads, errors, method and queue names) reaches the
browser as text. The one script, ``static/dashboard.js``, refreshes the
parts of a page marked ``data-live`` every few seconds without a reload.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any, get_args
from urllib.parse import quote, urlencode

import attrs
import jinja2
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from trio_monitor import metrics

from .._model import Failed, Job, JobState, Succeeded, utcnow
from .._storage import Storage
from ._cache import Cached, refresh_in_background
from ._chart import SAMPLE, throughput
from ._security import (
    CSRF_FIELD,
    SESSION_COOKIE,
    Guard,
    SecurityMiddleware,
    cookie_header,
)
from ._source import DashboardSource, source_for

__all__ = ["create_app"]

logger = logging.getLogger("trio_monitor.dashboard")

#: Job states by name, for the filters (every state the model defines).
STATES: dict[str, type[JobState]] = {cls.name: cls for cls in get_args(JobState)}

#: Above this many jobs, counts are re-read at most every :data:`COUNTS_MAX_AGE` seconds.
COUNTS_EXACT_LIMIT = 100_000
COUNTS_MAX_AGE = 10.0
#: While the chart's sample is full (a busy hour), it is re-read at most this often.
CHART_MAX_AGE = 5.0
#: Page sizes the jobs list accepts.
PAGE_SIZES = (25, 50, 100, 200)
#: How many failed jobs one "retry all failed" retries at most.
BULK_LIMIT = 10_000
#: A server whose heartbeat is older than this is shown as stale.
STALE_HEARTBEAT = 60.0

#: What the pages say after an action; the redirect names one of these.
NOTICES = {
    "retried": "The job was queued again.",
    "not-retried": "Only failed or aborted jobs can be retried; nothing changed.",
    "aborted": "The job was aborted.",
    "not-aborted": "The job had already finished; nothing changed.",
    "deleted": "The job was deleted.",
    "not-deleted": "There was nothing to delete.",
    "paused": "The queue is paused: its jobs wait until it is resumed.",
    "resumed": "The queue is running again.",
    "limits": "The queue's limits were saved.",
    "bulk": "The failed jobs were queued again.",
}


@attrs.frozen
class Counts:
    """Job counts by (queue, state) and when they were read."""

    by_queue_state: Mapping[tuple[str, str], int]
    read_at: datetime
    cached: bool

    @property
    def total(self) -> int:
        return sum(self.by_queue_state.values())

    def by_state(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for (_, state), n in self.by_queue_state.items():
            totals[state] = totals.get(state, 0) + n
        return totals

    def queues(self) -> list[str]:
        return sorted({queue for queue, _ in self.by_queue_state})


def _counts_max_age(counts: Counts) -> float:
    return COUNTS_MAX_AGE if counts.total > COUNTS_EXACT_LIMIT else 0.0


def _samples_max_age(samples: tuple[list[Job], list[Job]]) -> float:
    return CHART_MAX_AGE if any(len(rows) >= SAMPLE for rows in samples) else 0.0


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__ or "trio_monitor.jobs.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty_json"] = _pretty_json
    env.filters["when"] = _when
    env.filters["age"] = _age
    env.filters["short_when"] = _short_when
    env.filters["last_line"] = _last_line
    env.filters["segment"] = _quote
    env.filters["number"] = lambda n: f"{n:,}"
    return env


def _pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short_when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%m-%d %H:%M:%S")


def _last_line(text: str) -> str:
    """The last non-blank line: for a traceback, the exception itself."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files(__package__ or "trio_monitor.jobs.dashboard") / "static"
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in types:
            files[entry.name] = (entry.read_bytes(), types[suffix] + "; charset=utf-8")
    return files


class Dashboard:
    """The state behind one app: storage, source, guard, templates, caches."""

    def __init__(self, storage: Storage, guard: Guard, read_only: bool) -> None:
        self.storage = storage
        self.source: DashboardSource = source_for(storage)
        self.guard = guard
        self.read_only = read_only
        self.env = _environment()
        self.use_source(self.source)
        self.static = _static_files()
        self.registry = metrics.CollectorRegistry(auto_describe=True)
        self.job_counts = metrics.JobCountsCollector(self._metric_counts, registry=self.registry)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncGenerator[None, None]:
        """While the app runs, keep the costly readings fresh in a background task."""
        async with trio.open_nursery() as nursery:
            readings: list[Cached[Any]] = [self.counts, self.samples]
            await nursery.start(refresh_in_background, readings)
            yield
            nursery.cancel_scope.cancel()

    def use_source(self, source: DashboardSource) -> None:
        """Read from ``source`` from now on (and forget what was read before)."""
        self.source = source
        self.counts = Cached(self._read_counts, _counts_max_age)
        self.samples = Cached(self._read_samples, _samples_max_age)

    async def _read_counts(self) -> Counts:
        return Counts(await self.source.counts(), utcnow(), cached=False)

    async def _read_samples(self) -> tuple[list[Job], list[Job]]:
        succeeded = await self.source.list_jobs(state=Succeeded, limit=SAMPLE)
        failed = await self.source.list_jobs(state=Failed, limit=SAMPLE)
        return succeeded, failed

    async def read_counts(self) -> Counts:
        counts, reused = await self.counts.get()
        return attrs.evolve(counts, cached=reused)

    async def _metric_counts(self) -> Mapping[tuple[str, str], int]:
        return (await self.read_counts()).by_queue_state

    # -- rendering ------------------------------------------------------------

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        base = request.scope.get("root_path", "")
        browser_id = request.scope.get("state", {}).get("csrf_browser_id", "")
        notice = NOTICES.get(request.query_params.get("notice", ""))
        html = self.env.get_template(template).render(
            base=base,
            csrf_field=CSRF_FIELD,
            csrf_token=self.guard.csrf_token(browser_id) if browser_id else "",
            read_only=self.read_only,
            has_token=self.guard.token is not None,
            notice=notice,
            now=utcnow(),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    # -- pages ----------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        now = utcnow()
        counts = await self.read_counts()
        (succeeded, failed), _ = await self.samples.get()
        chart = throughput(succeeded, failed, now)
        servers = await self.source.servers()
        by_state = counts.by_state()
        finished = by_state.get("succeeded", 0) + by_state.get("failed", 0)
        return self.render(
            request,
            "overview.html",
            counts=counts,
            by_state=by_state,
            states=list(STATES),
            chart=chart,
            servers=sorted(servers, key=lambda s: s.id),
            stale_after=STALE_HEARTBEAT,
            all_time_failure_rate=by_state.get("failed", 0) / finished if finished else None,
            counts_exact_limit=COUNTS_EXACT_LIMIT,
            counts_max_age=COUNTS_MAX_AGE,
            chart_max_age=_samples_max_age((succeeded, failed)) or None,
        )

    async def jobs(self, request: Request) -> Response:
        params = request.query_params
        state_name = params.get("state") or None
        if state_name is not None and state_name not in STATES:
            raise HTTPException(400, f"unknown state {state_name!r}; one of {', '.join(STATES)}")
        try:
            limit = int(params.get("limit", "50"))
        except ValueError:
            limit = 0
        if limit not in PAGE_SIZES:
            raise HTTPException(400, f"limit must be one of {', '.join(map(str, PAGE_SIZES))}")
        queue = params.get("queue") or None
        method = params.get("method") or None
        before = params.get("before") or None
        rows = await self.source.list_jobs(
            state=STATES[state_name] if state_name else None,
            queue=queue,
            method=method,
            limit=limit,
            before=before,
        )
        filters = {"state": state_name, "queue": queue, "method": method, "limit": limit}
        return self.render(
            request,
            "jobs.html",
            rows=rows,
            states=list(STATES),
            filters=filters,
            page_sizes=PAGE_SIZES,
            before=before,
            older=rows[-1].id if len(rows) == limit else None,
            query=_query,
        )

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = await self.storage.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job with id {job_id!r}")
        return self.render(request, "job.html", job=job, **_job_details(job))

    async def queues(self, request: Request) -> Response:
        rows = await self.source.queues()
        return self.render(request, "queues.html", rows=rows, states=list(STATES))

    async def servers(self, request: Request) -> Response:
        rows = await self.source.servers()
        return self.render(
            request,
            "servers.html",
            rows=sorted(rows, key=lambda s: s.id),
            stale_after=STALE_HEARTBEAT,
        )

    async def recurring(self, request: Request) -> Response:
        rows = await self.source.recurring()
        return self.render(request, "recurring.html", rows=sorted(rows, key=lambda r: r.id))

    # -- actions ----------------------------------------------------------------

    async def _checked_form(self, request: Request, action: str) -> Mapping[str, Any]:
        """The POSTed form, once the action is allowed and its CSRF token is right."""
        if self.read_only:
            raise HTTPException(403, "this dashboard is read-only")
        form = await request.form()
        if not self.guard.csrf_valid(request, form.get(CSRF_FIELD)):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        return form

    def _back(self, request: Request, path: str, notice: str) -> Response:
        base = request.scope.get("root_path", "")
        return RedirectResponse(f"{base}{path}?notice={notice}", status_code=303)

    async def job_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("retry", "abort", "delete"):
            raise HTTPException(404, "no such action")
        await self._checked_form(request, action)
        job_id = request.path_params["job_id"]
        done = await {
            "retry": self.source.retry,
            "abort": self.source.abort,
            "delete": self.source.delete,
        }[action](job_id)
        past = {"retry": "retried", "abort": "aborted", "delete": "deleted"}[action]
        return self._back(request, f"/jobs/{_quote(job_id)}", past if done else f"not-{past}")

    async def retry_failed(self, request: Request) -> Response:
        form = await self._checked_form(request, "retry")
        queue = form.get("queue") or None
        method = form.get("method") or None
        retried = 0
        cursor: str | None = None
        while retried < BULK_LIMIT:
            page = await self.source.list_jobs(
                state=Failed, queue=queue, method=method, limit=500, before=cursor
            )
            if not page:
                break
            for job in page:
                retried += await self.source.retry(job.id)
            cursor = page[-1].id
        logger.info("dashboard: retried %d failed job(s)", retried)
        return self._back(request, "/jobs", "bulk")

    async def queue_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("pause", "resume"):
            raise HTTPException(404, "no such action")
        await self._checked_form(request, action)
        name = request.path_params["name"]
        if action == "pause":
            await self.source.pause_queue(name)
            return self._back(request, "/queues", "paused")
        await self.source.resume_queue(name)
        return self._back(request, "/queues", "resumed")

    async def queue_limits(self, request: Request) -> Response:
        form = await self._checked_form(request, "limits")
        name = form.get("queue")
        if not isinstance(name, str) or not name:
            raise HTTPException(400, "name the queue to limit")
        max_running, rate = _limits(form)
        await self.source.set_queue_limits(name, max_running=max_running, rate=rate)
        return self._back(request, "/queues", "limits")

    # -- login ------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        return self.render(request, "login.html", status=401, wrong=False)

    async def login(self, request: Request) -> Response:
        if self.guard.token is None:
            return self._back(request, "/", "")
        form = await request.form()
        if not self.guard.csrf_valid(request, form.get(CSRF_FIELD)):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        submitted = form.get("token")
        if not isinstance(submitted, str) or not self.guard.token_matches(submitted):
            return self.render(request, "login.html", status=401, wrong=True)
        response = RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)
        response.headers.append(
            "set-cookie", cookie_header(request, SESSION_COOKIE, self.guard.session_value())
        )
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not self.guard.csrf_valid(request, form.get(CSRF_FIELD)):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        response = self.render(request, "login.html", status=200, wrong=False)
        response.headers.append("set-cookie", cookie_header(request, SESSION_COOKIE, "", max_age=0))
        return response

    # -- machine endpoints --------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        await self.job_counts.refresh()
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        try:
            await self.source.servers()
        except Exception:
            logger.exception("dashboard health check: the storage did not answer")
            return JSONResponse({"status": "unavailable", "storage": "error"}, status_code=503)
        return JSONResponse({"status": "ok", "storage": "ok"})

    async def static_file(self, request: Request) -> Response:
        found = self.static.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404, "no such file")
        body, media_type = found
        return Response(body, media_type=media_type, headers={"cache-control": "max-age=300"})

    # -- errors -------------------------------------------------------------------

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self._error_page(request, exc.status_code, str(exc.detail))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        # Logged in full for the operator; the browser learns nothing of the server's code.
        logger.error("dashboard: %s %s failed", request.method, request.url.path, exc_info=exc)
        return self._error_page(
            request, 500, "Something went wrong on the server; it has been logged."
        )

    def _error_page(self, request: Request, status: int, message: str) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            return Response(message + "\n", status_code=status, media_type="text/plain")
        try:
            return self.render(
                request, "error.html", status=status, status_code=status, message=message
            )
        except Exception:
            return Response(message + "\n", status_code=status, media_type="text/plain")


def _quote(value: str) -> str:
    """``value`` as one URL path segment (a ``/`` in a queue name stays inside it)."""
    return quote(value, safe="")


def _query(**params: object) -> str:
    """A query string from the non-empty ``params``."""
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def _limits(form: Mapping[str, Any]) -> tuple[int | None, tuple[int, float] | None]:
    """``max_running`` and ``rate`` from the limits form (blank: no limit)."""
    try:
        max_running = int(form["max_running"]) if form.get("max_running") else None
        rate_n = form.get("rate_count")
        rate_s = form.get("rate_seconds")
        rate = (int(rate_n), float(rate_s)) if rate_n and rate_s else None
    except ValueError as exc:
        raise HTTPException(400, f"limits must be numbers ({exc})") from None
    if max_running is not None and max_running < 0:
        raise HTTPException(400, "max running must be 0 or more")
    if rate is not None and (rate[0] < 1 or not 0 < rate[1] < math.inf):
        raise HTTPException(400, "a rate is a count of 1 or more per a positive number of seconds")
    return max_running, rate


def _job_details(job: Job) -> dict[str, Any]:
    """What the job page shows beyond the job's own fields."""
    state = job.state
    fields = {f.name: getattr(state, f.name) for f in attrs.fields(type(state))}
    timestamps = [("created", job.created_at)]
    timestamps += [
        (name.replace("_", " "), v) for name, v in fields.items() if isinstance(v, datetime)
    ]
    if job.expires_at is not None:
        timestamps.append(("expires", job.expires_at))
    error = fields.get("error") if isinstance(fields.get("error"), str) else None
    progress = getattr(job, "progress", None)
    return {
        "state_fields": {k: v for k, v in fields.items() if k not in ("error", "result")},
        "error": error or None,
        "has_result": "result" in fields,
        "result": fields.get("result"),
        "timestamps": sorted(timestamps, key=lambda item: item[1]),
        "headers": getattr(job, "headers", None),
        "progress": progress,
    }


def create_app(storage: Storage, *, token: str | None = None, read_only: bool = False) -> Starlette:
    """The dashboard for the jobs in ``storage``, as an ASGI app that runs under Trio.

    Serve it with ``trio-monitor dashboard`` or any ASGI server running Trio
    (Hypercorn's Trio worker), or mount it in your own Starlette app
    (``Mount("/jobs", app=create_app(storage, token=...))``): links, forms
    and cookies follow the mount point.

    Args:
      storage: An open :class:`~trio_monitor.jobs.Storage`; the app does not
        close it.
      token: If given, every request needs it: ``Authorization: Bearer
        <token>``, or the session cookie set by the login form. Without a
        token the app answers loopback clients only (403 to others).
      read_only: Refuse every action (retry, abort, delete, pause, resume,
        limits) with 403; the pages hide nothing but disable the buttons.

    Raises:
      ValueError: ``token`` is an empty string.
      TypeError: ``token`` is not a str, ``read_only`` is not a bool, or
        ``storage`` is not a :class:`~trio_monitor.jobs.Storage`.
    """
    # The app's own options first, so a mistake in them is named whatever
    # the storage argument is; then the storage, before anything uses it.
    if not isinstance(read_only, bool):
        raise TypeError(f"read_only must be a bool, got {read_only!r}")
    guard = Guard(token)
    if not isinstance(storage, Storage):
        raise TypeError(
            f"storage must be an open jobs.Storage (from jobs.open_storage), "
            f"got {type(storage).__name__}"
        )
    dashboard = Dashboard(storage, guard, read_only)
    routes = [
        Route("/", dashboard.overview, name="overview"),
        Route("/jobs", dashboard.jobs, name="jobs"),
        Route("/jobs/retry-failed", dashboard.retry_failed, methods=["POST"]),
        Route("/jobs/{job_id}", dashboard.job, name="job"),
        Route("/jobs/{job_id}/{action}", dashboard.job_action, methods=["POST"]),
        Route("/queues", dashboard.queues, name="queues"),
        Route("/queues/limits", dashboard.queue_limits, methods=["POST"]),
        Route("/queues/{name}/{action}", dashboard.queue_action, methods=["POST"]),
        Route("/servers", dashboard.servers, name="servers"),
        Route("/recurring", dashboard.recurring, name="recurring"),
        Route("/login", dashboard.login_page, methods=["GET"]),
        Route("/login", dashboard.login, methods=["POST"]),
        Route("/logout", dashboard.logout, methods=["POST"]),
        Route("/metrics", dashboard.metrics),
        Route("/healthz", dashboard.healthz),
        Route("/static/{name}", dashboard.static_file),
    ]
    handlers: dict[Any, Any] = {
        HTTPException: dashboard.http_error,
        Exception: dashboard.server_error,
    }
    app = Starlette(
        debug=False,
        routes=routes,
        middleware=[
            Middleware(SecurityMiddleware, guard=dashboard.guard, login_page=dashboard.login_page)
        ],
        exception_handlers=handlers,
        lifespan=dashboard.lifespan,
    )
    app.state.dashboard = dashboard
    return app
