"""Fault injection: launch's guarantees under hostile parents, children, files and signals.

Every test here runs under both backends (the top-level conftest) and, where the start
method matters, under every start method through the ``start_method`` fixture, built
from launch's own table so that a new start method is covered without editing tests.
"""

from __future__ import annotations

import pytest

from launch._spec import START_METHODS


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each of launch's start methods."""
    return str(request.param)
