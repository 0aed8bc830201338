"""Both backends for every async test, and a no-leaked-process check on every test.

``--backend trio|asyncio|all`` (default all): trio tests run through pytest-trio, asyncio
tests through anyio's pytest plugin.
"""

from __future__ import annotations

import inspect

import pytest

import launch._start.forkserver

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=["trio", "asyncio", "all"],
        default="all",
        help="event loop(s) for async tests",
    )


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every test marked ``anyio`` (all async test modules) runs under both backends."""
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    choice = config.getoption("--backend")
    keep: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("anyio_backend") if callspec is not None else None
        if backend is not None and choice != "all" and backend != choice:
            config.hook.pytest_deselected(items=[item])
            continue
        if backend == "trio" and inspect.iscoroutinefunction(getattr(item, "obj", None)):
            item.add_marker(pytest.mark.trio)  # run by pytest-trio, not by anyio's runner
        keep.append(item)
    items[:] = keep


@pytest.fixture(autouse=True)
def leak_check(no_leaked_processes: None) -> None:
    """Every test runs under launch.testing's no-leaked-process check (the plugin's
    ``no_leaked_processes`` fixture): it fails if a process it started outlives it."""


def pytest_sessionfinish(session: pytest.Session) -> None:
    launch._start.forkserver.FORKSERVER.stop()
