"""Fixtures for the dashboard tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from trio_monitor import jobs

pytest.importorskip("starlette", reason="the dashboard extra is not installed")


@pytest.fixture
async def storage() -> AsyncIterator[jobs.Storage]:
    async with jobs.open_storage("memory://") as opened:
        yield opened
