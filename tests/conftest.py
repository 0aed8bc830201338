"""Both backends for every async test, every start method where the method matters, and
a no-leaked-process check on every test.

``--backend trio|asyncio|all`` (default all): trio tests run through pytest-trio, asyncio
tests through anyio's pytest plugin.
"""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import trio.testing

import launch._start.forkserver
from launch._spec import START_METHODS

# The Ray cluster tests import ray in their conftest: without ray the folder is not
# collected at all (nox -s ray runs it).
collect_ignore = [] if importlib.util.find_spec("ray") else ["ray_cluster"]

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


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each of launch's start methods, from launch's own table: a new start method is
    covered by every test that takes this fixture without editing the tests."""
    return str(request.param)


# With trio's MockClock, virtual time stands still while any task can run, and jumps to
# the next deadline once every task has been blocked for the threshold (real time).
# Among real processes the threshold must be long enough that an event about to happen
# (an exit seen through a pidfd, a message on a socket, a spawn in a worker thread) is
# not jumped over, even on a loaded machine.
REAL_PROCESS_AUTOJUMP_S = 0.3


def _mock_clock(backend: str, threshold: float) -> trio.testing.MockClock | None:
    # pytest-trio runs a test with the Clock among its fixtures; asyncio has none
    return trio.testing.MockClock(autojump_threshold=threshold) if backend == "trio" else None


@pytest.fixture
def virtual_clock(anyio_backend: str) -> trio.testing.MockClock | None:
    """Under trio, a clock that jumps as soon as every task is blocked: for tests with no
    real process, whose waits then take no real time. Under asyncio, None (real time)."""
    return _mock_clock(anyio_backend, 0)


@pytest.fixture
def grace_clock(anyio_backend: str) -> trio.testing.MockClock | None:
    """Under trio, a clock that jumps once every task has been blocked for
    ``REAL_PROCESS_AUTOJUMP_S``: a test with real processes that takes it waits out its
    shutdown grace periods in virtual time. Under asyncio, None (real time).

    Sound only in a test with no deadline that a slow real event could be jumped past
    (a ``ready_timeout`` during a slow startup, a bound on how soon a child exits).
    """
    return _mock_clock(anyio_backend, REAL_PROCESS_AUTOJUMP_S)


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
