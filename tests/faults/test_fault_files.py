"""Hostile files: device-lock directories and lock files that other users prepared,
unusable lock directories, and pipeline files as untrusted input.

Runs as root here and in CI; root bypasses permission checks, so "another user" is a
file chown-ed to 65534 and "no permission" is a subprocess that drops to uid 65534.
Everything lives under tmp_path.
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

import launch
from launch import PipelineSpec, ProcessSpec, ShutdownPolicy, StageSpec
from launch._devicelock import acquire_device_locks, default_lock_dir

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

NOBODY = 65534
# subprocesses import this launch (a checkout's, not only the installed one) and targets
PYTHONPATH = os.pathsep.join(
    [str(Path(launch.__file__).parent.parent), str(Path(__file__).parent.parent)]
)


@pytest.fixture(params=["xdg", "tmp"])
def private_dir(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The default per-user lock directory, under $XDG_RUNTIME_DIR or the temp dir,
    both moved into tmp_path."""
    monkeypatch.delenv("LAUNCH_LOCK_DIR", raising=False)
    if request.param == "xdg":
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = default_lock_dir()
    assert path.parent.parent == tmp_path
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


async def lock_error(lock_dir: Path) -> Exception | None:
    """What locking device 0 in ``lock_dir`` raises (None: it worked; released)."""
    try:
        locks = await acquire_device_locks(["0"], stage="s", lock_dir=lock_dir, timeout=1.0)
    except Exception as exc:
        return exc
    locks.release()
    return None


def assert_refused(error: Exception | None, path: Path, what: str) -> None:
    assert error is not None, f"{path} was used"
    assert isinstance(error, launch.DeviceLockError), error
    assert (error.name, error.path) == ("s", path)
    assert f"{path}: " in str(error) and what in str(error)


async def test_a_symlink_planted_in_the_default_dir_is_never_followed(
    private_dir: Path, victim: Path
) -> None:
    private_dir.mkdir(parents=True, mode=0o700)
    (private_dir / "device-0.lock").symlink_to(victim)
    error = await lock_error(private_dir)
    assert victim.read_text() == "precious\n"
    assert_refused(error, private_dir / "device-0.lock", "is a symbolic link")


async def test_a_hard_link_is_never_written(private_dir: Path, victim: Path) -> None:
    private_dir.mkdir(parents=True, mode=0o700)
    os.link(victim, private_dir / "device-0.lock")
    error = await lock_error(private_dir)
    assert victim.read_text() == "precious\n"
    assert_refused(error, private_dir / "device-0.lock", "has 2 hard links")


async def test_a_default_dir_created_by_another_user_is_refused(
    private_dir: Path, victim: Path
) -> None:
    private_dir.mkdir(parents=True, mode=0o700)
    (private_dir / "device-0.lock").symlink_to(victim)
    top = private_dir.parent  # what another user pre-creates in /tmp: launch-<uid>
    os.chown(top, NOBODY, NOBODY)
    error = await lock_error(private_dir)
    assert victim.read_text() == "precious\n"
    assert_refused(error, top, f"is owned by uid {NOBODY}")


@pytest.mark.parametrize("mode", [0o777, 0o770])
async def test_a_group_or_other_writable_default_dir_is_refused(
    private_dir: Path, mode: int
) -> None:
    private_dir.mkdir(parents=True)
    private_dir.chmod(mode)
    assert_refused(await lock_error(private_dir), private_dir, "writable by group or others")


async def test_lock_files_and_dirs_of_the_default_dir_are_private(private_dir: Path) -> None:
    private_dir.mkdir(parents=True, mode=0o755)  # as an older launch left it
    (private_dir / "device-1.lock").write_text("")
    (private_dir / "device-1.lock").chmod(0o644)
    locks = await acquire_device_locks(["0", "1"], stage="s", lock_dir=private_dir, timeout=1)
    locks.release()
    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in (private_dir.parent, private_dir, *private_dir.iterdir())
    }
    assert set(modes.values()) <= {0o700, 0o600}, modes
    assert modes["device-0.lock"] == modes["device-1.lock"] == 0o600


@pytest.mark.parametrize(
    ("mode", "owner", "what"),
    [
        (0o777, 0, "writable by group or others but not sticky"),
        (0o775, 0, "writable by group or others but not sticky"),
        (0o755, NOBODY, f"is owned by uid {NOBODY}"),
    ],
)
async def test_a_configured_dir_must_be_yours_or_roots_and_sticky_if_shared(
    tmp_path: Path, mode: int, owner: int, what: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    os.chown(shared, owner, owner)
    assert_refused(await lock_error(shared), shared, what)


async def test_another_users_lock_file_in_a_sticky_shared_dir_is_locked_not_written(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sharing between users: a /tmp-like directory
    theirs = shared / "device-0.lock"
    theirs.write_text("4242\n")
    theirs.chmod(0o644)
    os.chown(theirs, NOBODY, NOBODY)
    locks = await acquire_device_locks(["0"], stage="s", lock_dir=shared, timeout=1)
    try:
        assert await lock_error(shared) is not None  # held: a second taker times out
    finally:
        locks.release()
    assert theirs.read_text() == "4242\n"


def one_device_pipeline(lock_dir: Path | str) -> PipelineSpec:
    stage = StageSpec("a", [ProcessSpec("targets:serve", name="a0")], devices=(0,))
    return PipelineSpec([stage], lock_dir=lock_dir, device_lock_timeout=5)


async def test_a_lock_dir_that_is_a_file_fails_the_launch_cleanly(tmp_path: Path) -> None:
    in_the_way = tmp_path / "locks"
    in_the_way.write_text("")
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_pipeline(one_device_pipeline(in_the_way)):
            pytest.fail("the lock dir is unusable: the stage must not start")
    first = info.value.first
    assert type(first) is launch.DeviceLockError
    assert (first.group, first.path, first.pid) == ("a", in_the_way, None)
    assert f"{in_the_way}: is a regular file, not a directory" in str(info.value)


NO_PERMISSION = """
import os, sys
import anyio
import launch
from launch import PipelineSpec, ProcessSpec, StageSpec


async def main(lock_dir: str) -> None:
    stage = StageSpec("a", [ProcessSpec("targets:serve", name="a0")], devices=(0,))
    spec = PipelineSpec([stage], lock_dir=lock_dir, device_lock_timeout=5)
    try:
        async with launch.open_pipeline(spec):
            print("up")
    except launch.LaunchFailed as exc:
        print(type(exc.first).__name__, exc.first)


# The interpreter's stdlib may be under /root: import what the run needs first, by a
# run that fails the same way (a lock dir that is a file).
with open("file", "w"):
    pass
try:
    anyio.run(main, "file", backend=sys.argv[1])
except BaseException:
    pass  # (launch before the fix: a raw error)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
anyio.run(main, "ro", backend=sys.argv[1])
"""


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_lock_dir_this_user_cannot_write_fails_the_launch_cleanly(
    tmp_path: Path, backend: str
) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "ro").mkdir(mode=0o755)  # root's, readable: allowed, but not writable
    result = subprocess.run(
        [sys.executable, "-c", NO_PERMISSION, backend],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,  # the child reaches "ro" relative to it after dropping to nobody
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
    )
    assert result.returncode == 0, result.stderr
    *_, last = result.stdout.splitlines()
    assert last.startswith("DeviceLockError stage 'a' cannot lock its devices: ")
    assert f"ro/device-0.lock: permission denied to this user (uid {NOBODY})" in last


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "COLUMNS": "200"},
    )


def test_launch_up_with_an_unusable_lock_dir_reports_it(tmp_path: Path) -> None:
    (tmp_path / "locks").write_text("")
    path = tmp_path / "pipe.toml"
    path.write_text(
        "[pipeline]\nlock_dir = 'locks'\n"
        "[[stage]]\nname = 'a'\ntarget = 'targets:serve'\ndevices = [0]\n"
    )
    result = run_cli(tmp_path, "up", "--plain", str(path))
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "ExceptionGroup" not in out, out
    assert result.returncode == 3, out
    assert f"{tmp_path / 'locks'}: is a regular file, not a directory" in out


def test_launch_check_reports_a_target_whose_package_raises(tmp_path: Path) -> None:
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("raise RuntimeError('no GPU here')\n")
    path = tmp_path / "pipe.toml"
    path.write_text("[[stage]]\nname = 'a'\ntarget = 'brokenpkg.engine:run'\n")
    result = run_cli(tmp_path, "check", str(path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"launch: {path}: stage 'a': key 'target': importing the package of "
        "'brokenpkg.engine' (for 'brokenpkg.engine:run') raised RuntimeError: no GPU here"
    ]


def load_error(tmp_path: Path, text: str) -> launch.ConfigError:
    path = tmp_path / "pipe.toml"
    path.write_text(text)
    with pytest.raises(launch.ConfigError) as info:
        launch.load_pipeline(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and message.count(str(path)) == 1, message
    return info.value


STAGE = "[[stage]]\nname = 'a'\ntarget = 'm:f'\n"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (STAGE + "kwargs = { x = " + "[" * 1000 + "]" * 1000 + " }\n", "stage 'a': key 'kwargs'"),
        (STAGE + "[stage.kwargs]\n" + ".".join(["k"] * 200) + " = 1\n", "stage 'a': key 'kwargs'"),
        ("x = " + "[" * 1000 + "]" * 1000 + "\n", "key 'x'"),
    ],
    ids=["array", "dotted-keys", "top-level"],
)
def test_pipeline_file_nesting_is_bounded(tmp_path: Path, text: str, where: str) -> None:
    assert f"{where}: nested deeper than 32 levels" in str(load_error(tmp_path, text))


def test_pipeline_file_size_is_bounded(tmp_path: Path) -> None:
    error = load_error(tmp_path, "#" * (2 * 1024 * 1024) + "\n" + STAGE)
    assert "is larger than 1024 KiB" in str(error)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (STAGE + "replicas = 5000\n", "stage 'a': key 'replicas': must be an integer >= 1"),
        (
            "".join(
                f"[[stage]]\nname = 's{i}'\ntarget = 'm:f'\nreplicas = 1000\n" for i in range(5)
            ),
            "stage 's4': key 'replicas': would bring the pipeline to 5000 children",
        ),
    ],
    ids=["per-stage", "in-total"],
)
def test_pipeline_file_replicas_are_bounded(tmp_path: Path, text: str, where: str) -> None:
    assert where in str(load_error(tmp_path, text))


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    errors: list[Exception] = []

    def load() -> None:
        try:
            launch.load_pipeline(fifo)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    blocked = thread.is_alive()
    if blocked:  # let the reader go: a writer that closes at once gives it EOF
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert not blocked, "load_pipeline blocked on a FIFO"
    assert [str(e) for e in errors] == [f"{fifo}: is a FIFO, not a regular file"]


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (
            STAGE + "[stage.shutdown]\nkill_timeout = inf\n",
            "stage 'a': key 'shutdown.kill_timeout'",
            "finite",
        ),
        ("[pipeline]\nready_timeout = inf\n" + STAGE, "key 'pipeline.ready_timeout'", '"none"'),
        (STAGE + "ready_timeout = inf\n", "stage 'a': key 'ready_timeout'", '"none"'),
        (
            "[pipeline]\ndevice_lock_timeout = inf\n" + STAGE,
            "key 'pipeline.device_lock_timeout'",
            '"none"',
        ),
    ],
)
def test_pipeline_file_timeouts_must_be_finite(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    message = str(load_error(tmp_path, text))
    assert where in message and "must be a finite number of seconds" in message
    assert what in message


def test_infinite_timeouts_are_refused_from_python_too() -> None:
    with pytest.raises(ValueError, match="kill_timeout must be a finite number"):
        ShutdownPolicy(kill_timeout=math.inf)
    with pytest.raises(ValueError, match=r"ready_timeout must be .*use None for no limit"):
        ProcessSpec("m:f", name="a", ready_timeout=math.inf)
    stage = StageSpec("a", [ProcessSpec("m:f", name="a")])
    with pytest.raises(ValueError, match=r"device_lock_timeout must be .*use None"):
        PipelineSpec([stage], device_lock_timeout=math.inf)


def test_errors_name_file_stage_and_key_once(tmp_path: Path) -> None:
    neg = load_error(tmp_path, "[pipeline]\ndevice_lock_timeout = -1\n" + STAGE)
    assert ": key 'pipeline.device_lock_timeout': must be" in str(neg)
    env = str(load_error(tmp_path, STAGE + "env = { X = 1 }\n"))
    assert env.count("stage 'a'") == 1
    assert ": stage 'a': key 'env': env['X'] must be a string, got int 1" in env


def test_one_env_rule_for_process_and_stage_specs() -> None:
    spec = ProcessSpec("m:f", name="a", env={"MY-VAR": "1"})
    assert dict(StageSpec("s", [spec], env={"MY-VAR": "1"}).env) == {"MY-VAR": "1"}
    for bad in ("A=B", "A B", ""):
        with pytest.raises(ValueError, match=r"env key .* is not a valid variable name"):
            ProcessSpec("m:f", name="a", env={bad: "1"})
        with pytest.raises(ValueError, match=r"env key .* is not a valid variable name"):
            StageSpec("s", [spec], env={bad: "1"})
