"""Startup accelerators: launch's own forkserver (preload, the CUDA guard rail, awaited
prewarm, env isolation), the parent-side preload, and the weight prefetch."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest

import launch
import launch._prefetch
from launch import PipelineSpec, ProcessSpec, StageSpec
from launch._preload import Preload
from launch._start.forkserver import FORKSERVER

pytestmark = pytest.mark.anyio


def slow_module(directory: Path, name: str, seconds: float, body: str = "") -> str:
    """A module that takes ``seconds`` to import; ``directory`` must be on sys.path. Its
    name is made unique: imports are process-wide, and each test runs under two backends."""
    name = f"{name}_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(f"import time\ntime.sleep({seconds})\n{body}\n")
    return name


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of generated modules, on sys.path (children and the forkserver get it)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture
def fresh_forkserver() -> object:
    """A forkserver of this test's own: stopped before (so its preloads are this test's)
    and after (so a refusal does not outlive the test)."""
    FORKSERVER.stop()
    yield FORKSERVER
    FORKSERVER.stop()


def loaded(name: str, modules: list[str], method: str = "forkserver") -> ProcessSpec:
    return ProcessSpec(
        "targets:report_loaded", name=name, kwargs={"names": modules}, start_method=method
    )


async def test_forkserver_is_launchs_own_and_host_multiprocessing_is_untouched(
    fresh_forkserver: object,
) -> None:
    method_before = multiprocessing.get_start_method(allow_none=True)
    host_server = multiprocessing.forkserver._forkserver._forkserver_pid
    async with launch.open_group([loaded("a", []), loaded("b", [])], name="fs") as group:
        assert FORKSERVER.pid is not None
        assert FORKSERVER.pid not in (group["a"].pid, group["b"].pid)
    assert multiprocessing.get_start_method(allow_none=True) == method_before
    assert multiprocessing.forkserver._forkserver._forkserver_pid == host_server


async def test_a_prewarm_still_importing_is_awaited_by_the_first_fork(
    modules: Path, fresh_forkserver: object
) -> None:
    name = slow_module(modules, "slow_preload_a", 1.0)
    launch.prewarm([name])  # returns at once; the server imports for 1 s
    async with launch.open_group([loaded("c", [name])], name="fs") as group:
        assert group["c"].payload == {name: True}  # forked after the import, not raced
    assert name not in sys.modules  # imported in the server, not here


async def test_a_preload_that_initialises_cuda_is_refused(
    modules: Path, fresh_forkserver: object
) -> None:
    # Simulated: a module that makes torch.cuda.is_initialized() true, as a CUDA call at
    # import time would.
    fake = slow_module(
        modules,
        "fake_cuda_init",
        0,
        "import sys, types\n"
        "torch = types.ModuleType('torch')\n"
        "torch.cuda = types.SimpleNamespace(is_initialized=lambda: True)\n"
        "sys.modules['torch'] = torch\n",
    )
    launch.prewarm([fake])
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([loaded("d", [])], name="fs"):
            pass
    first = info.value.first
    assert isinstance(first, launch.SpawnFailed)
    assert f"importing {fake!r} initialised CUDA" in str(first)
    assert "torch.cuda.is_initialized() is True" in str(first)
    assert first.pid is None  # nothing was forked


def test_cuda_check_sees_an_open_nvidia_uvm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that covers non-torch CUDA users (cupy, jax): an open /dev/nvidia-uvm."""
    from _launch_child import _forkserver as server

    assert server.cuda_initialized() is None or "torch" in sys.modules
    real_readlink = os.readlink
    monkeypatch.setattr(
        os,
        "readlink",
        lambda path: "/dev/nvidia-uvm" if str(path).endswith("/0") else real_readlink(path),
    )
    # no CUDA driver loaded here: the open file is NVML's, say, and forking is safe
    assert server.cuda_initialized() is None or "torch" in sys.modules
    monkeypatch.setattr(server, "_cuda_driver_initialized", lambda: True)  # cuInit ran
    reason = server.cuda_initialized()
    assert reason is not None and "/dev/nvidia-uvm is open" in reason


async def test_forkserver_children_get_their_own_env_and_the_parent_keeps_its_own(
    fresh_forkserver: object,
) -> None:
    before = dict(os.environ)
    specs = [
        ProcessSpec(
            "targets:report_env",
            name=f"r{i}",
            env={"CUDA_VISIBLE_DEVICES": str(i)},
            start_method="forkserver",
        )
        for i in range(3)
    ]
    async with launch.open_group(specs, name="fs") as group:
        assert [c.payload["value"] for c in group] == ["0", "1", "2"]
    assert dict(os.environ) == before


async def test_pipeline_prewarms_its_preload_at_the_root(
    modules: Path, fresh_forkserver: object
) -> None:
    name = slow_module(modules, "slow_preload_b", 0.3)
    spec = PipelineSpec(
        [StageSpec("s", [loaded("e", [name])]), StageSpec("t", [loaded("f", [name], "spawn")])],
        preload=[name],
    )
    async with launch.open_pipeline(spec) as running:
        assert running["s"]["e"].payload == {name: True}
        assert running["t"]["f"].payload == {name: False}  # spawn children start clean


async def test_preload_modules_imports_off_the_event_loop(modules: Path) -> None:
    name = slow_module(modules, "parent_slow_a", 0.6)
    ticks = 0
    async with launch.preload_modules([name]) as preload:
        while not preload.done:
            ticks += 1
            await anyio.sleep(0.02)
        await preload.wait()
    assert name in sys.modules and preload.imported[name] >= 0.5
    assert ticks >= 10  # the loop kept running while the module imported


async def test_preload_modules_stops_after_the_current_module_when_the_block_fails(
    modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = slow_module(modules, "parent_slow_b", 0.3)
    second = slow_module(modules, "parent_slow_c", 0)
    returned = threading.Event()  # the importing thread is done: nothing more is imported
    import_all = Preload._import_all

    def import_all_then_tell(self: Preload) -> None:
        try:
            import_all(self)
        finally:
            returned.set()

    monkeypatch.setattr(Preload, "_import_all", import_all_then_tell)
    with pytest.raises(KeyError):
        async with launch.preload_modules([first, second]) as preload:
            with anyio.fail_after(5):
                while first not in sys.modules:  # there from the start of its import
                    await anyio.sleep(0.01)
            raise KeyError("boom")  # while `first` imports (0.3 s)
    assert await anyio.to_thread.run_sync(returned.wait, 5)
    assert list(preload.imported) == [first] and second not in sys.modules


async def test_preload_modules_reports_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        async with launch.preload_modules(["no_such_module_xyz"]) as preload:
            await preload.wait()


def model_dir(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text("{}")
    (root / "tokenizer.json").write_text("{}")
    for shard in range(3):
        (root / f"model-{shard}.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + shard))
    (root / "README.md").write_text("not read")
    return root


async def test_prefetch_reads_every_weight_and_config_file(tmp_path: Path) -> None:
    root = model_dir(tmp_path / "model")
    stats = await launch.prefetch_weights(root, max_parallel=2)
    expected = sum(p.stat().st_size for p in root.iterdir() if p.suffix != ".md")
    assert stats.files == 5 and len(stats.done) == 5
    assert stats.bytes_read == expected and not stats.cancelled and stats.skipped is None


async def test_prefetch_skips_what_is_not_local(tmp_path: Path) -> None:
    assert (await launch.prefetch_weights("meta-llama/Llama-3-8B")).skipped == (
        "not a local directory"
    )
    (tmp_path / "empty").mkdir()
    stats = await launch.prefetch_weights(tmp_path / "empty")
    assert stats.skipped == "no weight, config or tokenizer files"


async def every_reader_stopped(reads: BlockingReads) -> bool:
    """Wait (up to 2 s) until every reading thread that started has seen the stop."""
    deadline = time.monotonic() + 2
    while len(reads.stopped) < len(reads.calls) and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    return 1 <= len(reads.stopped) == len(reads.calls) <= 4  # max_parallel at most


class BlockingReads:
    """Stands in for the file reader: blocks until told to stop, counting who stopped."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.calls: list[Path] = []  # list.append is atomic across threads
        self.stopped: list[float] = []

    def __call__(self, path: Path, stop: threading.Event) -> int:
        self.calls.append(path)
        self.started.set()
        while not stop.wait(0.01):
            pass
        self.stopped.append(time.monotonic())
        return 0


async def test_prefetch_is_cancelled_with_its_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = BlockingReads()
    monkeypatch.setattr(launch._prefetch, "_read", reads)
    root = model_dir(tmp_path / "model")
    spec = PipelineSpec(
        [StageSpec("s", [ProcessSpec("targets:crash", name="c", kwargs={"delay": 0.3})])],
        prefetch=[root],
    )
    with pytest.raises(launch.LaunchFailed):
        async with launch.open_pipeline(spec):
            pass
    assert reads.started.is_set()
    assert await every_reader_stopped(reads)


async def test_prefetch_is_cancelled_with_its_task_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = BlockingReads()
    monkeypatch.setattr(launch._prefetch, "_read", reads)
    root = model_dir(tmp_path / "model")
    async with anyio.create_task_group() as tg:
        tg.start_soon(launch.prefetch_weights, root)
        await anyio.to_thread.run_sync(reads.started.wait, 5)
        tg.cancel_scope.cancel()
    assert await every_reader_stopped(reads)
