"""``trio-monitor dashboard`` as a real process: Hypercorn's Trio worker serving the app."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRIO_MONITOR_STORAGE": f"sqlite:///{tmp_path / 'j.db'}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_monitor", "dashboard", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"dashboard on (http://\S+?)[;,( ]", line)
        if found:
            return process, found.group(1)
    process.kill()
    pytest.fail(f"the dashboard did not start (exit status {process.wait()})")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serves_until_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    process, url = _start(tmp_path, "--read-only")
    try:
        assert url.startswith("http://127.0.0.1:")
        health = httpx.get(url + "/healthz", timeout=10)
        assert health.json() == {"status": "ok", "storage": "ok"}
        page = httpx.get(url + "/", headers={"accept": "text/html"}, timeout=10)
        assert "read-only" in page.text
        assert "content-security-policy" in page.headers
        process.send_signal(sig)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_with_a_token_every_request_needs_it(tmp_path: Path) -> None:
    process, url = _start(tmp_path, "--token", "t0ken", "--host", "127.0.0.1")
    try:
        assert httpx.get(url + "/healthz", timeout=10).status_code == 401
        ok = httpx.get(url + "/healthz", headers={"authorization": "Bearer t0ken"}, timeout=10)
        assert ok.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_without_the_dashboard_extra_one_line_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_monitor.cli import main

    for name in list(sys.modules):
        if name.startswith("trio_monitor.jobs.dashboard"):
            monkeypatch.delitem(sys.modules, name)
        elif name == "starlette" or name.startswith("starlette."):
            monkeypatch.setitem(sys.modules, name, None)  # import starlette... -> ImportError
    monkeypatch.setitem(sys.modules, "starlette", None)
    assert main(["dashboard", "--storage", "memory://"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'trio-monitor[dashboard]'" in err
