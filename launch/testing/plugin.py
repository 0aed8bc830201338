"""launch's pytest plugin (entry point ``launch`` in ``pytest11``): inert unless used.

- ``launcher`` fixture: a :class:`launch.testing.Launcher` under the test's event loop
  (trio via pytest-trio, or anyio's plugin with asyncio or trio); torn down after the
  test, failing it if a child died after READY.
- ``no_leaked_processes`` fixture, ``@pytest.mark.launch_leak_check``, or
  ``--launch-leak-check`` for the whole session: fail a test that leaves a process it
  started running (and kill it). Only processes the test started are looked at: see
  :mod:`launch.testing._leaks`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ._launcher import Launcher
from ._leaks import LeakedProcesses, ProcessWatch, session_token

MARKER = "launch_leak_check"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("launch")
    group.addoption(
        "--launch-leak-check",
        action="store_true",
        default=False,
        help="fail any test that leaves a process it started running (launch)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: fail the test if it leaves a process it started running"
    )
    if config.getoption("--launch-leak-check"):
        # Before any fixture starts a server: its processes inherit the token too.
        session_token()


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    """Fail the test if a process it started is still running afterwards."""
    watch = ProcessWatch()
    yield
    try:
        watch.check()
    except LeakedProcesses as exc:
        pytest.fail(str(exc))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.config.getoption("--launch-leak-check") or item.get_closest_marker(MARKER):
        fixturenames = getattr(item, "fixturenames", None)
        if fixturenames is not None and "no_leaked_processes" not in fixturenames:
            fixturenames.insert(0, "no_leaked_processes")


@pytest.fixture
async def launcher() -> AsyncIterator[Launcher]:
    """Open groups and pipelines (``await launcher.group(specs)``); all torn down after
    the test, which fails if a child died after READY."""
    async with Launcher() as opened:
        yield opened
