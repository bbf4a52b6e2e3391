"""Bad input exits 2 with one clear line and no traceback; a missing extra says what to install."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

import trio_monitor.__main__ as entry_point
from tests.cli.runner import command_env, run


def _usage_error(done_stderr: str) -> None:
    assert "Traceback" not in done_stderr
    assert done_stderr.strip(), "an error must say what is wrong"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["jobs", "--storage", "foo://x"], "unsupported storage URL", id="scheme"),
        pytest.param(["jobs", "--storage", "sqlite:///x.db?bogus=1"], "bogus", id="sqlite-option"),
        pytest.param(
            ["servers", "--storage", "postgresql://u@127.0.0.1:1/db?nonsense=1&pool_timeout=1"],
            "cannot open storage",
            id="postgres-option",
        ),
        pytest.param(
            ["servers", "--storage", "postgresql://u:pw@127.0.0.1:1/db?pool_timeout=1"],
            "Connection refused",  # the pool's first error, not "pool timed out"
            id="postgres-unreachable",
        ),
        pytest.param(["jobs"], "no storage given", id="no-storage"),
        pytest.param(["worker", "nocolon"], "module:attribute", id="app-spec"),
        pytest.param(["worker", "no_such_module_xyz:workers"], "cannot import", id="app-module"),
        pytest.param(["worker", "tests.cli.app:missing"], "no attribute", id="app-attribute"),
        pytest.param(
            ["worker", "tests.cli.app:not_a_registry"], "not a trio_monitor", id="app-type"
        ),
        pytest.param(["enqueue", "add", "--", "-1"], None, id="negative-number-ok"),
        pytest.param(
            ["enqueue", "add", "--priority", "x"], "'x' is not a valid integer", id="type"
        ),
        pytest.param(["enqueue", "add", "{"], "not valid JSON", id="json"),
        pytest.param(["enqueue", "add", "--delay", "-1"], "-1", id="negative-delay"),
        pytest.param(["jobs", "--state", "sleeping"], "sleeping", id="state"),
        pytest.param(["queues", "--storage", "foo://x"], "unsupported storage URL", id="queues"),
        pytest.param(
            ["migrate", "--storage", "sqlite:///x.db?bogus=1"], "bogus", id="migrate-option"
        ),
        pytest.param(
            ["migrate", "--check", "--storage", "postgresql://u:pw@127.0.0.1:1/db"],
            "Connection refused",
            id="migrate-unreachable",
        ),
        pytest.param(["pause"], "Missing argument", id="pause-queue"),
        pytest.param(["abort"], "Missing argument", id="abort-ids"),
        pytest.param(["enqueue", "add", "--headers", "[1]"], "JSON object", id="headers"),
        pytest.param(["jobs", "--bogus"], "No such option", id="option"),
        pytest.param(["frobnicate"], "No such command", id="command"),
        pytest.param(
            ["worker", "tests.cli.app:workers", "--metrics-port", "70000"], "70000", id="port"
        ),
        pytest.param(
            ["worker", "tests.cli.app:workers", "--log-format", "xml"], "xml", id="log-format"
        ),
    ],
)
def test_bad_input_exits_2_without_a_traceback(
    tmp_path: Path, args: list[str], message: str | None
) -> None:
    env = command_env(TRIO_MONITOR_STORAGE=f"sqlite:///{tmp_path / 'jobs.db'}")
    if args == ["jobs"]:
        env.pop("TRIO_MONITOR_STORAGE")
    done = run(*args, env=env)
    if message is None:  # a JSON payload that looks like an option, after --
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 2, (done.stdout, done.stderr)
    _usage_error(done.stderr)
    assert message in done.stderr
    assert done.stderr.count("\n") == 1 or done.stderr.startswith("Usage:")


def test_storage_errors_are_one_line_and_hide_passwords() -> None:
    done = run("jobs", "--storage", "nosuch://admin:hunter2@db/x")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "hunter2" not in done.stderr
    assert "admin:***@db" in done.stderr


def test_storage_after_the_command_beats_before_and_environment(tmp_path: Path) -> None:
    good = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = command_env(TRIO_MONITOR_STORAGE="foo://bad")
    assert run("jobs", "--storage", good, env=env).returncode == 0
    assert run("--storage", good, "jobs", env=env).returncode == 0
    assert run("--storage", "foo://bad", "jobs", "--storage", good).returncode == 0
    assert run("--storage", good, "jobs", "--storage", "foo://bad").returncode == 2


def test_help_and_version() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in (
        "worker",
        "enqueue",
        "jobs",
        "job",
        "delete",
        "servers",
        "recurring",
        "demo",
        "dashboard",
    ):
        assert f"  {command} " in done.stdout
    assert run("--version").stdout.strip().endswith(__import__("trio_monitor").__version__)


def test_without_the_cli_extra_one_line_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(sys.modules):
        if name == "trio_monitor.cli" or name.startswith("trio_monitor.cli."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "click", None)  # import click -> ModuleNotFoundError
    assert entry_point.main(["--help"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'trio-monitor[cli]'" in err


def test_a_metrics_port_in_use_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = command_env(TRIO_MONITOR_STORAGE=f"sqlite:///{tmp_path / 'jobs.db'}")
        done = run("worker", "tests.cli.app:workers", "--metrics-port", str(port), env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot serve metrics on port {port}" in done.stderr.splitlines()[-1]
