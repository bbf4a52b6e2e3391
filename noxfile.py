"""Development sessions: ``nox`` runs tests, lint, typecheck and docs.

``nox -s bench`` runs the benchmarks and ``nox -s soak`` the soak tests; neither
is part of the default run.
"""

from __future__ import annotations

from pathlib import Path

import nox

PYTHON = "3.11"
#: Every extra the tests, type checks and docs need.
EXTRAS = ".[test,postgres,cli,metrics,otel,dashboard]"
ROOT = Path(__file__).parent
LINT_PATHS = ["trio_monitor", "tests", "benchmarks", "noxfile.py", "docs/conf.py", "docs/_ext"]
# Peer libraries the benchmarks compare against (not needed by the package).
BENCH_PEERS = ["aiojobs", "huey", "procrastinate", "saq"]

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
# Sessions install the project on every run, so reusing a venv only saves
# re-creating it; a fresh machine starts from scratch either way.
nox.options.reuse_existing_virtualenvs = True


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite, without the soak tests."""
    session.install(EXTRAS)
    session.run("pytest", "-m", "not soak", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Long-running soak tests only."""
    session.install(".[test,postgres]")
    session.run("pytest", "-p", "no:cacheprovider", "-m", "soak", "tests", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    paths = [path for path in LINT_PATHS if (ROOT / path).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict and pyright (strict, configured in pyproject.toml)."""
    # pyright[nodejs] brings Node.js as a wheel, so no system Node is needed.
    session.install(EXTRAS, "mypy", "pyright[nodejs]")
    session.run("mypy", "--strict", "trio_monitor")
    # Point pyright at this venv's interpreter, not whichever python is first
    # on PATH outside nox.
    python = str(Path(session.bin) / "python")
    session.run("pyright", "--pythonpath", python, "trio_monitor")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML docs, warnings as errors."""
    # The CLI reference is generated from the commands, and the metrics and
    # tracing references import their modules, and the testing reference the
    # pytest plugin: install those extras and pytest too.
    session.install(
        ".[cli,metrics,otel,dashboard]", "pytest", "sphinx", "sphinxcontrib-trio", "furo"
    )
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def screenshots(session: nox.Session) -> None:
    """Re-take the dashboard screenshots in docs/_static/dashboard with the browser tests."""
    session.install(EXTRAS)
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/dashboard/test_browser.py",
        env={
            "TRIO_MONITOR_SCREENSHOTS": str(ROOT / "docs" / "_static" / "dashboard"),
            "TRIO_MONITOR_REQUIRE_BROWSER": "1",
        },
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py; arguments are passed on.

    ``nox -s bench -- --quick`` for a smoke run; ``nox -s bench -- --plot``
    also writes the charts of the docs' benchmark pages
    (``docs/benchmarks/_images``). Everything the scripts import is
    installed here: the package with its PostgreSQL extra, matplotlib (the
    ``bench`` extra) and the peer libraries.
    """
    # The dashboard benchmark drives the app through httpx's ASGI transport.
    session.install(".[postgres,bench,dashboard]", "httpx")
    missing = []
    for peer in BENCH_PEERS:
        # One peer that fails to install must not cost the others' comparisons.
        try:
            session.install(peer, silent=True)
        except nox.command.CommandFailed:
            missing.append(peer)
    if missing:
        session.warn(f"could not install {', '.join(missing)}; their comparisons are skipped")
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if not scripts:
        session.log("no benchmarks/bench_*.py yet: nothing to run")
        return
    for script in scripts:
        session.run("python", str(script.relative_to(ROOT)), *session.posargs)
