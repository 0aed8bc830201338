"""launch.testing, the pytest plugin for users' test sessions, run in real inner pytest
sessions (pytester, in subprocesses): the launcher fixture under pytest-trio and under
anyio's plugin, the misbehaving children, and the opt-in leak check."""

from __future__ import annotations

import pytest

LAUNCHER_TESTS = """
import time

import pytest

import launch
from launch.testing import misbehaving

FAST = launch.ShutdownPolicy(stop_timeout=0.5, term_timeout=0.5, kill_timeout=1.0)


async def test_group_is_ready(launcher):
    group = await launcher.group(
        [misbehaving("serve", "a"), misbehaving("slow_start", "b", seconds=0.3)]
    )
    assert group["a"].payload["pid"] == group["a"].pid
    assert group["b"].state is launch.ChildState.READY


async def test_crash_before_ready(launcher):
    with pytest.raises(launch.LaunchFailed) as info:
        await launcher.group([misbehaving("serve", "ok"), misbehaving("crash", delay=0.1)])
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.phase == "load_model"
    assert "weights file is corrupt" in first.remote_traceback


async def test_hang_times_out_naming_its_phase(launcher):
    with pytest.raises(launch.LaunchFailed) as info:
        await launcher.group([misbehaving("hang", ready_timeout=0.5)], shutdown=FAST)
    assert isinstance(info.value.first, launch.ReadyTimeout)
    assert info.value.first.phase == "nccl_init"


async def test_ignore_sigterm_is_killed_at_teardown(launcher):
    group = await launcher.group([misbehaving("ignore_sigterm")], shutdown=FAST)
    assert group["ignore-sigterm"].state is launch.ChildState.READY


async def test_pipeline(launcher):
    spec = launch.PipelineSpec(
        [
            launch.StageSpec("first", [misbehaving("serve", "f")]),
            launch.StageSpec("second", [misbehaving("serve", "s")], after="first"),
        ]
    )
    running = await launcher.pipeline(spec)
    assert running["second"]["s"].state is launch.ChildState.READY


async def test_taken_failure_does_not_fail_the_test(launcher):
    await launcher.group([misbehaving("die_after_ready", after=0.1)])
    deadline = time.monotonic() + 10
    while not launcher.failures and time.monotonic() < deadline:
        await SLEEP(0.05)
    [failure] = launcher.take_failures()
    assert isinstance(failure.first, launch.ChildDied)


async def test_child_dying_after_ready_fails_the_test(launcher):
    await launcher.group([misbehaving("die_after_ready", after=0.1)])
    await SLEEP(1.0)
"""

TRIO_HEADER = "import trio\npytestmark = pytest.mark.trio\nSLEEP = trio.sleep\n"
ANYIO_HEADER = """
import anyio
pytestmark = pytest.mark.anyio
SLEEP = anyio.sleep


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""


def with_header(header: str) -> str:
    top, _, rest = LAUNCHER_TESTS.partition("FAST =")
    return f"{top}{header}\nFAST ={rest}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # pytest-trio tears fixtures down inside the test's run, so the test whose child
        # died after READY fails; anyio's plugin tears them down after it, so that test
        # passes and its teardown errors (once per backend: asyncio and trio)
        pytest.param(TRIO_HEADER, {"passed": 6, "failed": 1}, id="pytest-trio"),
        pytest.param(ANYIO_HEADER, {"passed": 14, "errors": 2}, id="anyio"),
    ],
)
def test_launcher_fixture(pytester: pytest.Pytester, header: str, expected: dict[str, int]) -> None:
    pytester.makepyfile(test_launcher=with_header(header))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--launch-leak-check")
    result.assert_outcomes(**expected)
    result.stdout.fnmatch_lines(["*test_child_dying_after_ready_fails_the_test*"])
    result.stdout.fnmatch_lines(["*died after READY*"])
    assert "processes left running" not in result.stdout.str()


LEAKY = """
import subprocess
import sys

import pytest

LEAKED = []


@pytest.fixture(autouse=True, scope="module")
def reap_after_the_module():
    yield  # after every test's own leak check: kill what the unchecked tests left
    for proc in LEAKED:
        proc.kill()
        proc.wait()


def leak():
    LEAKED.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))


def test_unmarked_leak():
    leak()


@pytest.mark.launch_leak_check
def test_marked_leak():
    leak()


def test_fixture_leak(no_leaked_processes):
    leak()


def test_clean(no_leaked_processes):
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_orphan_leak(no_leaked_processes):
    # a `sleep` in a session of its own, whose parent has exited: not our descendant
    # any more, and not named python
    subprocess.run(
        [sys.executable, "-c", "import subprocess; subprocess.Popen(['sleep', '60'],"
         " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"],
        check=True,
    )
"""


def test_leak_check_is_opt_in_per_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    # a test whose teardown fails counts as passed and errored
    result.assert_outcomes(passed=5, errors=3)
    result.stdout.fnmatch_lines(["*test_unmarked_leak PASSED*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_marked_leak*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_fixture_leak*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_orphan_leak*"])
    result.stdout.fnmatch_lines(["*processes left running (now killed)*sleep 60*"])


def test_leak_check_for_the_whole_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--launch-leak-check")
    result.assert_outcomes(passed=5, errors=4)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_unmarked_leak*"])


def test_the_plugin_is_registered_and_inert(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_nothing():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--trace-config")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*launch.testing.plugin*"])


def test_misbehaving_refuses_an_unknown_kind() -> None:
    from launch.testing import misbehaving

    with pytest.raises(ValueError, match="unknown misbehaviour 'explode'"):
        misbehaving("explode")
