"""``trio-monitor migrate [--check]``: the schema step of a deploy.

``--check`` changes nothing and exits 1 while migrations are pending, so a
pipeline can gate on it; ``migrate`` applies them. A database written by a
newer trio_monitor exits 2: this version must not write into it.
"""

from __future__ import annotations

from functools import partial

import click

from trio_monitor import jobs

from ._errors import BadUsage, Failed, run_async
from ._group import cli
from ._storage import storage_errors, storage_option, storage_url

__all__ = ["migrate"]


def _too_new(url: str, status: jobs.SchemaStatus) -> BadUsage:
    return BadUsage(
        f"the database has schema version {status.current}, newer than this trio_monitor's "
        f"{status.latest}: upgrade trio_monitor before running it on this database"
    )


async def _migrate(url: str, check: bool) -> tuple[jobs.SchemaStatus, jobs.SchemaStatus]:
    """The schema status before, and after (the same with ``check``)."""
    with storage_errors(url):
        before = await jobs.check_schema(url)
    if before.too_new:
        raise _too_new(url, before)
    if check or before.up_to_date:
        return before, before
    try:
        with storage_errors(url):
            return before, await jobs.migrate(url)
    except jobs.SchemaVersionError:  # written by a newer version meanwhile
        raise _too_new(url, await jobs.check_schema(url)) from None


@cli.command()
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; exit 1 if migrations are pending, 0 if the schema is up to date.",
)
@storage_option
def migrate(check: bool) -> None:
    """Bring the database's schema up to date (run it before starting a new version).

    Exit status: 0 up to date, 1 migrations pending (with --check), 2 the
    database was written by a newer trio_monitor, or cannot be opened.
    """
    before, after = run_async(partial(_migrate, storage_url(), check))
    if before.up_to_date:
        click.echo(f"schema up to date (version {before.latest})")
    elif check:
        raise Failed(
            f"migrations pending: the database has schema version {before.current}, this "
            f"trio_monitor writes {before.latest}; run `trio-monitor migrate`"
        )
    else:
        click.echo(f"migrated the schema from version {before.current} to {after.current}")
