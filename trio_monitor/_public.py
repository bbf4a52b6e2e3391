"""Make re-exported names present themselves under their public module."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping


def document_as_public(
    namespace: MutableMapping[str, object], names: Iterable[str], public_module: str
) -> None:
    """Set ``__module__`` of each re-exported name to ``public_module``.

    Docs, reprs and tracebacks then say ``trio_monitor.TaskHandle`` rather
    than the private module that happens to define it.
    """
    private_prefix = public_module + "._"
    for name in names:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith(private_prefix):
            obj.__module__ = public_module
