"""``python -m trio_monitor demo``: the job-server demo runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

import trio_monitor.__main__ as cli


def test_demo_runs_every_kind_of_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "CRON_WINDOW", 2.5)  # the retries still take ~4.5 s
    db = tmp_path / "demo.db"
    assert cli.main(["demo", "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    assert f"sqlite:///{db}" in out
    lines = out.splitlines()
    rows = {line.split()[1]: line for line in lines if line[:8].isalnum() and "  " in line}
    assert "succeeded  3" in rows["upload"]
    assert "failed     3" in rows["build_report"]
    assert "report template is missing" in rows["build_report"]
    assert "succeeded" in rows["send_reminder"]
    assert "succeeded" in rows["tick"]
    assert "jobs finished" in err
    assert db.exists()
