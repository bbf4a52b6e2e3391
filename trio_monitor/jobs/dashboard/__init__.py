"""The web dashboard: ``create_app(storage)`` is an ASGI app for watching and operating jobs.

Needs the ``dashboard`` extra (``pip install 'trio-monitor[dashboard]'``:
Starlette, Jinja2, python-multipart, Hypercorn and prometheus_client). The
``trio-monitor dashboard`` command serves it with Hypercorn's Trio worker.
"""

from ..._public import document_as_public
from ._app import create_app
from ._security import check_bind, is_loopback
from ._source import DashboardSource, source_for

__all__ = [
    "DashboardSource",
    "check_bind",
    "create_app",
    "is_loopback",
    "source_for",
]

document_as_public(globals(), __all__, __name__)
