"""Sphinx configuration for the trio_monitor documentation."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import trio_monitor

# Local extensions (docs/_ext): the CLI reference generated from the commands.
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "trio_monitor"
author = "The trio_monitor developers"
copyright = "the trio_monitor developers"
release = trio_monitor.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    "cli_reference",
]
# No intersphinx: the docs build offline. Names from Trio and the standard
# library are written as plain text or literals instead of cross-references.

html_theme = "furo"
html_title = f"trio_monitor {release}"

# Public classes report trio_monitor as their module, where autodoc cannot
# see the source order; reference pages that care list members explicitly.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

default_role = "py:obj"
exclude_patterns = ["_build", "_ext"]


def setup(app: object) -> None:
    # benchmarks/index.rst lists the benchmark pages with a glob. Until the
    # first page exists that glob matches nothing, which Sphinx warns about
    # (with no warning type, so suppress_warnings cannot name it); the build
    # must still pass with -W then, so drop that one warning in that one case.
    here = Path(__file__).parent
    if any(page.name != "index.rst" for page in (here / "benchmarks").glob("*.rst")):
        return

    def keep(record: logging.LogRecord) -> bool:
        return "didn't match any documents" not in record.getMessage()

    logging.getLogger("sphinx.sphinx.directives.other").addFilter(keep)
