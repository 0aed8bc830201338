"""Both backends for every async test, and a no-leaked-process check on every test.

``--backend trio|asyncio|all`` (default all): trio tests run through pytest-trio, asyncio
tests through anyio's pytest plugin.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterator

import psutil
import pytest

import launch._forkserver


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


def _ours(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftover_processes(before: set[int], started: float) -> list[psutil.Process]:
    """Descendants not there before, plus orphans of ours created since ``started``."""
    me = psutil.Process()
    # launch's forkserver, and multiprocessing's resource tracker (started by the bench's
    # multiprocessing baselines): singletons owned by their modules, stopped at exit
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None) or -1
    allowed = before | {launch._forkserver.FORKSERVER.pid or -1, tracker}
    found = {p.pid: p for p in me.children(recursive=True) if p.pid not in allowed and _ours(p)}
    uid = os.getuid()
    for proc in psutil.process_iter(["ppid", "create_time", "uids", "name"]):
        info = proc.info
        if (
            info["ppid"] == 1
            and info["create_time"] is not None
            and info["create_time"] >= started - 1
            and info["uids"] is not None
            and info["uids"].real == uid
            and "python" in (info["name"] or "")
            and _ours(proc)
        ):
            found.setdefault(proc.pid, proc)
    return list(found.values())


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail the test if any process it started is still alive afterwards."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.time()
    yield
    leaked = leftover_processes(before, started)
    if leaked:
        described = [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in leaked if _ours(p)]
        for proc in leaked:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if described:
            pytest.fail(f"test left processes running: {described}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    launch._forkserver.FORKSERVER.stop()
