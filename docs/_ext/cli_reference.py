"""Sphinx directive ``.. cli-reference:: module:group``: the CLI reference, from the commands.

Renders the ``--help`` text of a Click group and of each of its commands,
each in its own section, so the reference can never drift from the code:
there is no hand-copied help text. Used by ``docs/reference/cli.rst``.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: Width of the rendered help: fits the theme's code blocks without scrolling.
HELP_WIDTH = 88


def _load(spec: str) -> click.Group:
    module_name, _, attribute = spec.partition(":")
    group = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(group, click.Group):
        raise TypeError(f"{spec} is not a click.Group")
    return group


def _help(command: click.Command, name: str, parent: click.Context | None) -> str:
    ctx = click.Context(
        command,
        info_name=name,
        parent=parent,
        terminal_width=HELP_WIDTH,
        max_content_width=HELP_WIDTH,
    )
    return command.get_help(ctx)


def _block(text: str) -> list[str]:
    return ["", ".. code-block:: text", "", *(f"   {line}" for line in text.splitlines()), ""]


class CliReference(SphinxDirective):
    """``.. cli-reference:: package.module:group`` with an optional ``:prog:``."""

    required_arguments = 1
    option_spec = {"prog": str}  # noqa: RUF012 (docutils reads a class attribute)

    def run(self) -> list[nodes.Node]:
        group = _load(self.arguments[0])
        prog = self.options.get("prog", group.name or "cli")
        root = click.Context(group, info_name=prog)
        lines = _block(_help(group, prog, None))
        for name in sorted(group.list_commands(root)):
            command = group.get_command(root, name)
            if command is None or command.hidden:
                continue
            title = f"``{prog} {name}``"
            lines += [title, "~" * len(title), *_block(_help(command, name, root))]
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source=self.arguments[0]), container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-reference", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
