"""``trio-monitor demo``: the job-server demo runs end to end, its progress fit for a pipe."""

from __future__ import annotations

import re
from pathlib import Path

from tests.cli.runner import run


def test_demo_runs_every_kind_of_job(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = run("demo", "--db", str(db), "--cron-window", "2.5")  # the retries take ~4.5 s
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    assert f"sqlite:///{db}" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if "  " in line}
    assert rows["upload"][2:4] == ["succeeded", "3"]
    assert rows["build_report"][2:4] == ["failed", "3"]
    assert "report template is missing" in " ".join(rows["build_report"])
    assert rows["send_reminder"][2] == "succeeded"
    assert rows["tick"][2] == "succeeded"
    assert db.exists()
    # Not a terminal: the bar is printed once, in its final state, not frame by frame.
    assert "\r" not in err
    assert err.count("finished") == 1
    job_rows = [line for line in out.splitlines() if re.fullmatch(r"[0-9a-f]{8}", line[:8])]
    assert f"{len(job_rows)}/{len(job_rows)} finished, 0 awaiting retry" in err
    assert "Traceback" not in err  # expected failures stay off the terminal
