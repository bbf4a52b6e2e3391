"""The dashboard's security rules, over HTTP in-process (SPEC §7, issue 13).

Escaping is checked on the HTML here and in a real browser in
``test_browser.py`` (where a script that ran would show).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_monitor import jobs
from trio_monitor.cli import main
from trio_monitor.jobs.dashboard import check_bind, create_app, is_loopback

from .helpers import HOSTILE, HTML, client_for, csrf_token, dashboard, job

TOKEN = "s3cret-token"
PAGES = ["/", "/jobs", "/jobs?state=failed", "/queues", "/servers", "/recurring"]


async def _hostile_job(storage: jobs.Storage) -> jobs.Job:
    bad = job(
        HOSTILE,
        {HOSTILE: [HOSTILE]},
        state=jobs.Failed(HOSTILE),
        queue=HOSTILE,
    )
    await storage.enqueue(bad)
    await storage.upsert_recurring(
        jobs.RecurringJob(HOSTILE, "0 * * * * *", HOSTILE, HOSTILE, HOSTILE, bad.created_at)
    )
    return bad


class _Page(HTMLParser):
    """Every tag and attribute of a page, and the text of the element with ``id``."""

    def __init__(self, html: str, text_of: str = "") -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.handlers: list[tuple[str, str]] = []
        self.inline_scripts = 0
        self._text_of, self._depth, self.text = text_of, 0, ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        names = dict(attrs)
        self.handlers += [(tag, name) for name in names if name.startswith("on")]
        if tag == "script" and "src" not in names:
            self.inline_scripts += 1
        if self._depth:
            self._depth += 1
        elif self._text_of and names.get("id") == self._text_of:
            self._depth = 1

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.text += data


#: Every tag the dashboard's own templates use; anything else was injected.
OWN_TAGS = {
    "html", "head", "meta", "title", "link", "script", "body", "header", "a", "nav", "span",
    "form", "input", "button", "p", "main", "section", "div", "h1", "h2", "table", "thead",
    "tbody", "tr", "th", "td", "figure", "svg", "line", "text", "rect", "g", "figcaption",
    "pre", "code", "select", "option", "label", "progress",
}  # fmt: skip


def _assert_inert(html: str, where: str) -> None:
    page = _Page(html)
    assert page.handlers == [], where
    assert page.inline_scripts == 0, where
    assert page.tags <= OWN_TAGS, (where, page.tags - OWN_TAGS)


async def test_hostile_job_data_is_escaped_everywhere(storage: jobs.Storage) -> None:
    bad = await _hostile_job(storage)
    async with dashboard(storage) as client:
        for path in [*PAGES, f"/jobs/{bad.id}", f"/jobs?queue={HOSTILE}"]:
            page = await client.get(path, headers=HTML)
            assert page.status_code == 200, path
            _assert_inert(page.text, path)
        detail = (await client.get(f"/jobs/{bad.id}", headers=HTML)).text
        # It is there, as text.
        assert "&lt;script&gt;window.__pwned = &#34;script&#34;&lt;/script&gt;" in detail
        assert 'id="job-error"' in detail


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("<>\"'&=/ ;!-ascriptonloadx")), max_size=40))
async def test_any_text_in_job_fields_stays_text(text: str) -> None:
    stored = job("m" + text, {"k": text}, state=jobs.Failed("e" + text), queue="q" + text)
    async with jobs.open_storage("memory://") as storage:
        await storage.enqueue(stored)
        async with dashboard(storage) as client:
            html = (await client.get(f"/jobs/{stored.id}", headers=HTML)).text
            listing = (await client.get("/jobs", headers=HTML)).text
    _assert_inert(html, "detail")
    _assert_inert(listing, "list")
    assert _Page(html, text_of="job-error").text == "e" + text


async def test_every_response_has_a_content_security_policy(storage: jobs.Storage) -> None:
    async with dashboard(storage) as client:
        for path in [*PAGES, "/metrics", "/healthz", "/nope", "/static/dashboard.js"]:
            response = await client.get(path, headers=HTML)
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
        # No inline script anywhere: the only script is the static file.
        page = (await client.get("/", headers=HTML)).text
        assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/dashboard.js" defer>']


async def test_post_without_csrf_is_refused_and_changes_nothing(storage: jobs.Storage) -> None:
    failed = job(state=jobs.Failed("boom"))
    await storage.enqueue(failed)
    before = await storage.get(failed.id)
    async with dashboard(storage) as client:
        good = await csrf_token(client)
        for data in ({}, {"csrf_token": ""}, {"csrf_token": "0" * 64}, {"csrf_token": good[:-1]}):
            for action in ("retry", "delete"):
                response = await client.post(f"/jobs/{failed.id}/{action}", data=data)
                assert response.status_code == 403, (action, data)
            response = await client.post("/jobs/retry-failed", data=data)
            assert response.status_code == 403
        # The right token from another browser (another cookie) is refused too.
        async with dashboard(storage) as other:
            response = await other.post(f"/jobs/{failed.id}/retry", data={"csrf_token": good})
            assert response.status_code == 403
    assert await storage.get(failed.id) == before


async def test_post_with_csrf_acts(storage: jobs.Storage) -> None:
    failed = job(state=jobs.Failed("boom"))
    await storage.enqueue(failed)
    async with dashboard(storage) as client:
        token = await csrf_token(client)
        response = await client.post(f"/jobs/{failed.id}/retry", data={"csrf_token": token})
        assert response.status_code == 303
        assert response.headers["location"] == f"/jobs/{failed.id}?notice=retried"
    stored = await storage.get(failed.id)
    assert stored is not None
    assert isinstance(stored.state, jobs.Enqueued)
    assert stored.attempts == 0


@pytest.mark.parametrize("path", [*PAGES, "/metrics", "/healthz", "/jobs/x"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
async def test_wrong_or_missing_token_is_401(
    storage: jobs.Storage, path: str, headers: dict[str, str]
) -> None:
    async with dashboard(storage, token=TOKEN) as client:
        response = await client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        # A browser gets the login form, still with 401, and none of the data.
        page = await client.get(path, headers={**headers, **HTML})
        assert page.status_code == 401
        assert 'name="token"' in page.text
        assert "jobs-table" not in page.text


async def test_token_as_bearer_header(storage: jobs.Storage) -> None:
    async with dashboard(storage, token=TOKEN) as client:
        for path in [*PAGES, "/metrics", "/healthz"]:
            response = await client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200, path


async def test_login_form_sets_a_strict_httponly_cookie(storage: jobs.Storage) -> None:
    failed = job(state=jobs.Failed("boom"))
    await storage.enqueue(failed)
    async with dashboard(storage, token=TOKEN) as client:
        login_csrf = await csrf_token(client, "/login")
        wrong = await client.post("/login", data={"csrf_token": login_csrf, "token": "nope"})
        assert wrong.status_code == 401
        assert "session" not in wrong.headers.get("set-cookie", "")
        no_csrf = await client.post("/login", data={"token": TOKEN})
        assert no_csrf.status_code == 403
        response = await client.post("/login", data={"csrf_token": login_csrf, "token": TOKEN})
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("trio_monitor_session=")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert TOKEN not in cookie  # derived from the token, not the token
        assert (await client.get("/jobs", headers=HTML)).status_code == 200
        # Actions still need CSRF with the cookie.
        assert (await client.post(f"/jobs/{failed.id}/retry")).status_code == 403
        token = await csrf_token(client)
        acted = await client.post(f"/jobs/{failed.id}/retry", data={"csrf_token": token})
        assert acted.status_code == 303
        # Logging out clears the cookie.
        out = await client.post("/logout", data={"csrf_token": token})
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert (await client.get("/jobs")).status_code == 401


async def test_a_forged_session_cookie_is_401(storage: jobs.Storage) -> None:
    async with dashboard(storage, token=TOKEN) as client:
        client.cookies.set("trio_monitor_session", TOKEN)
        assert (await client.get("/jobs")).status_code == 401
        client.cookies.set("trio_monitor_session", "")
        assert (await client.get("/jobs")).status_code == 401


async def test_read_only_refuses_every_action(storage: jobs.Storage) -> None:
    failed = job(state=jobs.Failed("boom"))
    await storage.enqueue(failed)
    async with dashboard(storage, read_only=True) as client:
        token = await csrf_token(client)
        posts = [
            f"/jobs/{failed.id}/retry",
            f"/jobs/{failed.id}/abort",
            f"/jobs/{failed.id}/delete",
            "/jobs/retry-failed",
            "/queues/default/pause",
            "/queues/default/resume",
            "/queues/limits",
        ]
        for path in posts:
            response = await client.post(path, data={"csrf_token": token, "queue": "default"})
            assert response.status_code == 403, path
        page = (await client.get(f"/jobs/{failed.id}", headers=HTML)).text
        assert "read-only" in page
        assert 'data-action="retry"' not in page  # the button is disabled
    stored = await storage.get(failed.id)
    assert stored is not None
    assert stored.state == jobs.Failed("boom")


async def test_without_a_token_only_loopback_clients_are_served(storage: jobs.Storage) -> None:
    app = create_app(storage)
    async with client_for(app, client=("203.0.113.9", 4000)) as remote:
        assert (await remote.get("/")).status_code == 403
        assert (await remote.get("/healthz")).status_code == 403
    for host in ("127.0.0.1", "::1"):
        async with client_for(app, client=(host, 4000)) as local:
            assert (await local.get("/healthz")).status_code == 200
    # With a token, remote clients are served once they present it.
    async with client_for(create_app(storage, token=TOKEN), client=("203.0.113.9", 4000)) as c:
        assert (await c.get("/healthz")).status_code == 401
        ok = await c.get("/healthz", headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


def test_remote_bind_without_a_token_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("0.0.0.0", "192.0.2.1", "::", "example.org"):
        with pytest.raises(ValueError, match="without a token"):
            check_bind(host, None)
        check_bind(host, TOKEN)  # fine with a token
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.8.9.10"):
        assert is_loopback(host)
        check_bind(host, None)
    status = main(["dashboard", "--storage", "memory://", "--host", "0.0.0.0"])
    assert status == 2
    err = capsys.readouterr().err
    assert "without a token" in err
    assert "Traceback" not in err


async def test_no_endpoint_returns_a_server_stack_trace(storage: jobs.Storage) -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            return "SECRET-INTERNAL-DETAIL"

    async def broken(*args: object, **kwargs: object) -> object:
        raise Broken

    storage.list_servers = broken  # type: ignore[method-assign]
    storage.list_jobs = broken  # type: ignore[method-assign]
    storage.get = broken  # type: ignore[method-assign]
    async with dashboard(storage) as client:
        for path in ["/", "/jobs", "/servers", "/jobs/x"]:
            for headers in (HTML, {}):
                response = await client.get(path, headers=headers)
                assert response.status_code == 500
                assert "Traceback" not in response.text
                assert "SECRET-INTERNAL-DETAIL" not in response.text
                assert "_app.py" not in response.text
        health = await client.get("/healthz")
        assert health.status_code == 503
        assert "SECRET" not in health.text


async def test_unknown_pages_and_methods_are_plain_errors(storage: jobs.Storage) -> None:
    async with dashboard(storage) as client:
        assert (await client.get("/nope", headers=HTML)).status_code == 404
        assert (await client.get("/logout")).status_code == 405
        bad = await client.get("/jobs?state=<b>", headers=HTML)
        assert bad.status_code == 400
        assert "<b>" not in bad.text[bad.text.index("<main>") :]


def test_create_app_checks_its_arguments() -> None:
    # Its own options are checked first, so they are named whatever the storage is ...
    storage = object()
    with pytest.raises(ValueError, match="token"):
        create_app(storage, token="")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="token"):
        create_app(storage, token=b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="read_only"):
        create_app(storage, read_only="yes")  # type: ignore[arg-type]
    # ... then the storage, before anything uses it.
    with pytest.raises(TypeError, match=r"storage must be an open jobs\.Storage"):
        create_app(storage, token=TOKEN)  # type: ignore[arg-type]
