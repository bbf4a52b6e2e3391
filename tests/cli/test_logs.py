"""The worker's log formats: readable text, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys

from hypothesis import given
from hypothesis import strategies as st

from tests.hostile import UnprintableError
from trio_monitor.cli._logs import JSONFormatter


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "trio_monitor.worker", logging.INFO, __file__, 1, message, args, None
    )
    record.__dict__.update(extra)
    return record


@given(message=st.text(), job_id=st.text())
def test_every_message_is_one_json_line(message: str, job_id: str) -> None:
    line = JSONFormatter().format(_record("%s", message, job_id=job_id))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == message
    assert entry["job_id"] == job_id  # extra= fields are kept
    assert (entry["level"], entry["logger"]) == ("info", "trio_monitor.worker")


def test_exceptions_and_unprintable_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", thing=UnprintableError())
        record.exc_info = sys.exc_info()
    entry = json.loads(JSONFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]
    assert entry["thing"] == "<unprintable UnprintableError>"
