"""Who may use the dashboard: loopback binding, the token, CSRF, response headers.

The rules (SPEC §7), and where each is enforced:

* Without a token the dashboard is for this machine only: :func:`check_bind`
  refuses a non-loopback address, and :class:`SecurityMiddleware` answers
  403 to any request whose client is not a loopback address (so an app that
  mounts the dashboard on a public port does not expose it either).
* With a token every request needs it, as ``Authorization: Bearer T`` or the
  session cookie the login form sets (HttpOnly, SameSite=Strict, derived
  from the token so the token itself is never stored in the browser). Both
  are compared in constant time. Missing or wrong: 401.
* Every POST carries a CSRF token: an HMAC, under a per-app secret, of a
  random per-browser cookie (a signed double submit). Missing or wrong: 403
  before anything is read or changed.
* Every response carries a Content-Security-Policy that allows scripts and
  styles from the dashboard itself only (no inline script), and refuses
  framing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSP",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "Guard",
    "SecurityMiddleware",
    "check_bind",
    "is_loopback",
]

SESSION_COOKIE = "trio_monitor_session"
CSRF_COOKIE = "trio_monitor_csrf"
CSRF_FIELD = "csrf_token"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

#: Paths (below the app's root) served without the token: the login form and its assets.
PUBLIC_PATHS = ("/login", "/static/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on ``host`` without a token unless it is a loopback address.

    Raises:
      ValueError: ``host`` is reachable from other machines and ``token`` is empty.
    """
    if not token and not is_loopback(host):
        raise ValueError(
            f"refusing to serve the dashboard on {host!r} without a token: it would let "
            "anyone who can reach that address retry, abort and delete jobs; "
            "pass --token (or bind to 127.0.0.1)"
        )


def route_path(scope: Scope) -> str:
    """The request path below the app's mount point."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class Guard:
    """The token and the CSRF secret of one dashboard app."""

    def __init__(self, token: str | None) -> None:
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str or None, got {type(token).__name__}")
        if token == "":
            raise ValueError("token must not be empty (pass None for no token)")
        self.token = token
        self._secret = secrets.token_bytes(32)
        self._session = (
            hmac.new(token.encode(), b"trio-monitor dashboard session", hashlib.sha256).hexdigest()
            if token
            else ""
        )

    def session_value(self) -> str:
        """The session cookie's value: derived from the token, useless without the app."""
        return self._session

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison with the token."""
        return self.token is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    def authenticated(self, conn: HTTPConnection) -> bool:
        """Whether the request carries the token (always, when there is none)."""
        if self.token is None:
            return True
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        cookie = conn.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    def csrf_token(self, browser_id: str) -> str:
        """The CSRF token forms carry for the browser holding ``browser_id``."""
        return hmac.new(self._secret, browser_id.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, request: Request, submitted: object) -> bool:
        """Whether ``submitted`` (the form field) matches this browser's cookie."""
        browser_id = request.cookies.get(CSRF_COOKIE)
        if not browser_id or not isinstance(submitted, str):
            return False
        return hmac.compare_digest(submitted.encode(), self.csrf_token(browser_id).encode())


class SecurityMiddleware:
    """Applies :class:`Guard`'s rules to every HTTP request, and the security headers.

    A browser (a GET accepting HTML) without the token gets ``login_page``,
    which answers 401 with the login form; anything else gets a plain 401.
    It also gives every browser its CSRF cookie: a request without one gets
    a fresh random id in ``scope["state"]["csrf_browser_id"]`` (the page
    renders its forms with it) and the cookie in the response.
    """

    def __init__(
        self, app: ASGIApp, guard: Guard, login_page: Callable[[Request], Awaitable[Response]]
    ) -> None:
        self.app = app
        self.guard = guard
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        browser_id = conn.cookies.get(CSRF_COOKIE)
        new_cookie = None
        if not browser_id:
            browser_id = new_cookie = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf_browser_id"] = browser_id

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if new_cookie is not None:
                    headers.append("set-cookie", self._csrf_cookie(conn, new_cookie))
            await send(message)

        refusal = self._refusal(conn)
        if refusal == "login":
            refusal = await self.login_page(Request(scope, receive))
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, conn: HTTPConnection) -> Response | Literal["login"] | None:
        client = conn.client.host if conn.client else ""
        if self.guard.token is None and not is_loopback(client):
            return PlainTextResponse(
                "This dashboard has no token, so it answers this machine only.\n", 403
            )
        path = route_path(conn.scope)
        if self.guard.authenticated(conn) or path.startswith(PUBLIC_PATHS):
            return None
        if conn.scope.get("method") == "GET" and "text/html" in conn.headers.get("accept", ""):
            return "login"  # a browser: the login form, with status 401
        return PlainTextResponse(
            "This dashboard needs its token: log in, or send Authorization: Bearer <token>.\n",
            401,
            headers={"www-authenticate": 'Bearer realm="trio-monitor"'},
        )

    @staticmethod
    def _csrf_cookie(conn: HTTPConnection, value: str) -> str:
        return cookie_header(conn, CSRF_COOKIE, value)


def cookie_header(
    conn: HTTPConnection, name: str, value: str, *, max_age: int | None = None
) -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict, scoped to the app, Secure over HTTPS."""
    path = conn.scope.get("root_path", "") or "/"
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if conn.url.scheme == "https":
        parts.append("Secure")
    return "; ".join(parts)
