"""Sphinx configuration of launch-tree's docs site (``nox -s docs``).

The pages are Markdown (MyST); the API reference is generated from the docstrings
(autodoc, Google-style sections through napoleon). Warnings are errors in CI.
"""

from __future__ import annotations

import launch

project = "launch-tree"
author = "launch-tree contributors"
copyright = "launch-tree contributors"
version = release = launch.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "development/bench-raw"]

myst_heading_anchors = 3  # GitHub-style #anchors on headings, as the pages link them
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# the vLLM adapters import vllm at module level; the reference is built without it
autodoc_mock_imports = ["vllm", "zmq", "msgspec", "yaml"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"launch-tree {release}"
html_static_path: list[str] = []
