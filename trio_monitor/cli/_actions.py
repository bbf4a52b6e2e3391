"""Commands that act on jobs by id: ``retry``, ``abort``, ``delete``.

Each one goes through :class:`jobs.Client`, acts on every id given, prints
one line per job it changed, and then exits 1 if any id was not found or
could not be changed, with one line saying why for each (a retry of a job
that has not failed, an abort of a finished job).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from functools import partial

import click

from trio_monitor import jobs

from ._errors import BadUsage, Failed, run_async
from ._group import cli
from ._storage import open_client, storage_option, storage_url

__all__ = ["abort", "delete", "retry"]

#: Jobs read per page by ``retry --failed``.
PAGE = 500

#: Acts on one job through the client: True if it changed.
Action = Callable[[jobs.Client, str], Awaitable[bool]]
#: Says what became of a job that was changed, and why one was not.
Describe = Callable[[str, jobs.Job | None], str]


async def _act(
    url: str,
    job_ids: Callable[[jobs.Client], AsyncGenerator[str, None]],
    action: Action,
    done: Describe,
    refused: Describe,
) -> list[str]:
    """Apply ``action`` to each id; echo what was done; return why the others were not."""
    problems: list[str] = []
    async with open_client(url) as client, contextlib.aclosing(job_ids(client)) as ids:
        async for job_id in ids:
            changed = await action(client, job_id)
            after = await client.get(job_id)
            if changed:
                click.echo(done(job_id, after))
            elif after is None:
                problems.append(f"no job with id {job_id!r}")
            else:
                problems.append(refused(job_id, after))
    return problems


def _report(problems: list[str]) -> None:
    if problems:
        raise Failed("; ".join(problems))


def _given(job_ids: Iterable[str]) -> Callable[[jobs.Client], AsyncGenerator[str, None]]:
    async def each(_client: jobs.Client) -> AsyncGenerator[str, None]:
        for job_id in job_ids:
            yield job_id

    return each


async def _failed_jobs(client: jobs.Client) -> AsyncGenerator[str, None]:
    """Every Failed job, newest first, paged by keyset so retried ones do not shift pages."""
    before: str | None = None
    while True:
        page = await client.list_jobs(state=jobs.Failed, limit=PAGE, before=before)
        for found in page:
            yield found.id
        if len(page) < PAGE:
            return
        before = page[-1].id


def _state_of(job: jobs.Job | None) -> str:
    return "gone" if job is None else job.state.name


# -- retry ID... | --failed -----------------------------------------------------


async def _retry(client: jobs.Client, job_id: str) -> bool:
    return await client.retry(job_id)


def _retried(job_id: str, _job: jobs.Job | None) -> str:
    return f"retried {job_id}"


def _not_retried(job_id: str, job: jobs.Job | None) -> str:
    if isinstance(job, jobs.Job) and isinstance(job.state, jobs.Failed | jobs.Aborted):
        return f"job {job_id} was not retried: a live job holds its unique key {job.unique_key!r}"
    return f"job {job_id} is {_state_of(job)}: only failed or aborted jobs can be retried"


@cli.command()
@click.argument("job_ids", metavar="ID...", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed job.")
@storage_option
def retry(job_ids: tuple[str, ...], all_failed: bool) -> None:
    """Put failed or aborted jobs back in their queue (attempts counted from 0 again)."""
    if bool(job_ids) == all_failed:
        raise BadUsage("give job ids or --failed (one of the two)")
    source = _failed_jobs if all_failed else _given(job_ids)
    _report(run_async(partial(_act, storage_url(), source, _retry, _retried, _not_retried)))


# -- abort ID... ------------------------------------------------------------------


async def _abort(client: jobs.Client, job_id: str) -> bool:
    return await client.abort(job_id, "aborted from the command line")


def _aborted(job_id: str, job: jobs.Job | None) -> str:
    if job is not None and isinstance(job.state, jobs.Processing):
        return f"abort requested for {job_id} (running on {job.state.server_name})"
    return f"aborted {job_id}"


def _not_aborted(job_id: str, job: jobs.Job | None) -> str:
    return f"job {job_id} is already {_state_of(job)}: only unfinished jobs can be aborted"


@cli.command()
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@storage_option
def abort(job_ids: tuple[str, ...]) -> None:
    """Abort jobs: a queued one never runs; a running one is cancelled by its server.

    Either way the job ends Aborted and is not retried.
    """
    _report(
        run_async(partial(_act, storage_url(), _given(job_ids), _abort, _aborted, _not_aborted))
    )


# -- delete ID... -----------------------------------------------------------------


async def _delete(client: jobs.Client, job_id: str) -> bool:
    return await client.delete(job_id)


def _deleted(job_id: str, job: jobs.Job | None) -> str:
    if job is not None and isinstance(job.state, jobs.Processing):
        return f"abort requested for {job_id} (running: it ends Aborted)"
    return f"deleted {job_id}"


def _not_deleted(job_id: str, job: jobs.Job | None) -> str:
    return f"job {job_id} is already {_state_of(job)}"


@cli.command()
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@storage_option
def delete(job_ids: tuple[str, ...]) -> None:
    """Mark jobs Deleted (they are removed for good after the failed-job TTL).

    A running job is aborted instead.
    """
    _report(
        run_async(partial(_act, storage_url(), _given(job_ids), _delete, _deleted, _not_deleted))
    )
