"""``trio-monitor dashboard``: serve the web dashboard with Hypercorn's Trio worker.

Needs the ``dashboard`` extra. Binds 127.0.0.1 by default; a non-loopback
``--host`` is refused (exit status 2) unless ``--token`` is given, since
anyone who can reach the port could otherwise retry, abort and delete jobs.
SIGINT or SIGTERM stops it.
"""

from __future__ import annotations

import signal
from functools import partial
from typing import cast

import click
import trio

from ._errors import BadUsage, run_async
from ._group import cli
from ._storage import open_cli_storage, storage_option, storage_url

__all__ = ["dashboard"]


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _serve(url: str, host: str, port: int, token: str | None, read_only: bool) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve  # pyright: ignore[reportUnknownVariableType]
    from hypercorn.typing import ASGIFramework

    from trio_monitor.jobs.dashboard import create_app

    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = None
    config.errorlog = "-"
    async with open_cli_storage(url) as storage:
        # Starlette's ASGI types are looser than Hypercorn's; the app is a valid ASGI 3 app.
        app = cast("ASGIFramework", create_app(storage, token=token, read_only=read_only))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    return

            async with trio.open_nursery() as nursery:
                urls: list[str] = await nursery.start(
                    partial(serve, app, config, shutdown_trigger=stop_on_signal)
                )
                notes = [
                    note for note, on in (("read-only", read_only), ("token required", token)) if on
                ]
                suffix = f" ({', '.join(notes)})" if notes else ""
                click.echo(f"dashboard on {', '.join(urls)}{suffix}; Ctrl+C stops it", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port (0: any)."
)
@click.option(
    "--token",
    envvar="TRIO_MONITOR_DASHBOARD_TOKEN",
    help=(
        "Require this token on every request (Bearer header or the login form). "
        "Needed to listen on anything but loopback [env: TRIO_MONITOR_DASHBOARD_TOKEN]."
    ),
)
@click.option("--read-only", is_flag=True, help="Show everything, refuse every action (403).")
@storage_option
def dashboard(host: str, port: int, token: str | None, read_only: bool) -> None:
    """Serve the web dashboard (overview, jobs, queues, servers, recurring; actions)."""
    try:
        from trio_monitor.jobs.dashboard import check_bind
    except ImportError as exc:
        raise BadUsage(
            f"the dashboard needs an extra ({exc}): pip install 'trio-monitor[dashboard]'"
        ) from None
    try:
        check_bind(host, token)
    except ValueError as exc:
        raise BadUsage(str(exc)) from None
    run_async(partial(_serve, storage_url(), host, port, token or None, read_only))
