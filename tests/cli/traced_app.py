"""``tests.cli.app``'s workers with an OpenTelemetry SDK that writes spans to a file.

The file is named by ``TRIO_MONITOR_TEST_SPANS``: one JSON span per line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.cli.app import workers

__all__ = ["workers"]


class _FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._path, "a") as out:
            for span in spans:
                out.write(span.to_json(indent=None) + "\n")
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(
    SimpleSpanProcessor(_FileExporter(os.environ["TRIO_MONITOR_TEST_SPANS"]))
)
trace.set_tracer_provider(_provider)
