"""The storage every command talks to: ``--storage URL`` or ``TRIO_MONITOR_STORAGE``.

The option is accepted both before and after the command name
(``trio-monitor --storage URL jobs`` and ``trio-monitor jobs --storage URL``);
the one after the command name wins.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from trio_monitor import jobs
from trio_monitor._failures import describe_exception

from ._errors import BadUsage

__all__ = [
    "ENV_VAR",
    "open_cli_storage",
    "open_client",
    "redact",
    "storage_errors",
    "storage_option",
    "storage_url",
]

ENV_VAR = "TRIO_MONITOR_STORAGE"
_KEY = "storage_url"

F = TypeVar("F", bound=Callable[..., Any])


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # The innermost option given wins, and any option given beats the
    # environment (which both the group and the command read).
    if value is None:
        return value
    from_env = ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.ENVIRONMENT
    if not (from_env and _KEY in ctx.meta):
        ctx.meta[_KEY] = value
    return value


def storage_option(fn: F) -> F:
    """Decorator: add ``--storage URL`` (also read from ``TRIO_MONITOR_STORAGE``)."""
    option = click.option(
        "--storage",
        metavar="URL",
        envvar=ENV_VAR,
        expose_value=False,
        callback=_remember,
        is_eager=True,
        help=(
            "Job storage: sqlite:///path.db, sqlite:////abs/path.db or "
            f"postgresql://user@host:port/db [env: {ENV_VAR}]."
        ),
    )
    return option(fn)


def storage_url() -> str:
    """The storage URL given on the command line or in the environment.

    Raises:
      BadUsage: none was given.
    """
    url = click.get_current_context().meta.get(_KEY)
    if not url:
        raise BadUsage(f"no storage given: pass --storage URL or set {ENV_VAR}")
    return str(url)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(error: Exception | str, url: str) -> str:
    """The first line of an error message, without the URL's password."""
    text = (error if isinstance(error, str) else describe_exception(error)).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return reason.replace(password, "***") if password else reason


class _FirstConnectionError(logging.Handler):
    """Keeps the first connection error a connection pool logs while the storage opens.

    A pool that cannot reach its database keeps trying until its timeout,
    logging each error, and then raises an exception that says only that it
    timed out. The first error it logged says why ("connection refused",
    "password authentication failed"): that is the line the operator needs.
    """

    LOGGERS = ("psycopg.pool",)

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.error: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.error is None:  # may run in the pool's thread
            self.error = record.getMessage()

    def __enter__(self) -> _FirstConnectionError:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


@contextlib.contextmanager
def storage_errors(url: str) -> Generator[None, None, None]:
    """Turn a failure to reach the storage ``url`` names into :class:`BadUsage`.

    For the calls that open a storage or read its schema: a bad URL, a
    missing extra, a database that cannot be reached or whose schema is
    newer than this trio_monitor.
    """
    connection_error = _FirstConnectionError()
    try:
        with connection_error:
            yield
    except ImportError as exc:
        raise BadUsage(
            f"storage {redact(url)!r} needs an extra that is not installed ({exc}); "
            "for PostgreSQL: pip install 'trio-monitor[postgres]'"
        ) from None
    except Exception as exc:
        reason = _reason(connection_error.error or exc, url)
        raise BadUsage(f"cannot open storage {redact(url)!r}: {reason}") from None


@contextlib.asynccontextmanager
async def open_cli_storage(url: str) -> AsyncGenerator[jobs.Storage, None]:
    """:func:`jobs.open_storage`, with a failure to open it turned into :class:`BadUsage`.

    Only opening is translated: an error raised by the body of the block
    propagates unchanged.
    """
    async with contextlib.AsyncExitStack() as stack:
        with storage_errors(url):
            storage = await stack.enter_async_context(jobs.open_storage(url))
        yield storage


@contextlib.asynccontextmanager
async def open_client(url: str) -> AsyncGenerator[jobs.Client, None]:
    """A :class:`jobs.Client` on the storage ``url`` names (see :func:`open_cli_storage`)."""
    async with open_cli_storage(url) as storage:
        yield jobs.Client(storage)
