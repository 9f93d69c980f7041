"""Sphinx configuration for greenback_loop's documentation."""

from __future__ import annotations

import greenback_loop

project = "greenback_loop"
author = "greenback_loop developers"
copyright = "2026, greenback_loop developers"
release = greenback_loop.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
