"""``launch bench``: the strategies, the spawn pipe-buffer hazard it is built around, the
teardown policies, and the command's outputs. Figures are the bench's business; these
tests assert behaviour, and only bounds that hold by construction or with wide margins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch.bench import BenchConfig, BenchResult, run_bench
from launch.bench._heavy import heavy_modules, make_config
from launch.bench._report import claims, tables
from launch.bench._strategies import (
    PEERS,
    STRATEGIES,
    ChildPlan,
    MpChild,
    stop_all,
    wait_all_ready,
)
from launch.bench._teardown import TEARDOWN_POLICIES, VLLM_WAIT_S

ROOT = Path(__file__).parent.parent
TINY = {"import_s": 0.05, "init_s": 0.05}


def plans(
    scratch: Path, n: int, *, payload: int, import_s: float, init_s: float
) -> list[ChildPlan]:
    config = make_config(scratch, import_s=import_s, init_s=init_s, work="sleep", payload=payload)
    return [ChildPlan(f"child-{i}", "synthetic", {"config": config}) for i in range(n)]


def test_a_ctrl_c_inside_a_baseline_start_loses_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT arriving once the child is spawned but before ``Process.start`` has recorded
    it: the child is still known (and reaped), the interrupt still raised."""
    import signal
    from multiprocessing import popen_spawn_posix

    spawn = popen_spawn_posix.Popen._launch

    def spawn_then_interrupt(self: object, process_obj: object) -> None:
        spawn(self, process_obj)  # type: ignore[arg-type]
        signal.raise_signal(signal.SIGINT)  # Ctrl-C, before Popen.__init__ returns

    monkeypatch.setattr(popen_spawn_posix.Popen, "_launch", spawn_then_interrupt)
    with heavy_modules() as scratch:
        (plan,) = plans(scratch, 1, payload=1024, **TINY)
        child = MpChild(plan)
        try:
            with pytest.raises(KeyboardInterrupt):
                child.start()
            assert child.process.pid is not None, "the spawned child was lost"
        finally:
            stop_all([child])
        assert child.process.exitcode is not None


def test_a_ctrl_c_while_the_pool_starts_its_threads_loses_no_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGINT inside ``submit``, once the pool's new worker thread runs but before the
    pool has recorded it (``Executor.map`` there loses that thread's child): every child
    is still started and known, and the interrupt still raised."""
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from launch.bench._strategies import submit_all

    start_thread = threading.Thread.start
    fired: list[bool] = []

    def start_then_interrupt(self: threading.Thread) -> None:
        start_thread(self)
        if not fired and threading.current_thread() is threading.main_thread():
            fired.append(True)
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, before submit() returns

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with heavy_modules() as scratch:
        children = [MpChild(plan) for plan in plans(scratch, 2, payload=1024, **TINY)]
        try:
            with pytest.raises(KeyboardInterrupt), ThreadPoolExecutor(max_workers=2) as pool:
                for done in submit_all(pool, MpChild.start, children):
                    done.result()
            assert fired
            assert all(child.process.pid is not None for child in children)
        finally:
            stop_all(children)
        assert all(child.process.exitcode is not None for child in children)


@pytest.mark.parametrize(("payload", "blocks"), [(1024, False), (1024 * 1024, True)])
def test_spawn_start_blocks_on_child_imports_only_above_the_pipe_buffer(
    payload: int, blocks: bool
) -> None:
    """The hazard the synthetic model reproduces: with more than 64 KiB to write,
    multiprocessing's spawn ``start()`` returns only once the child has imported the
    config's module (0.6 s here)."""
    with heavy_modules() as scratch:
        (plan,) = plans(scratch, 1, payload=payload, import_s=0.6, init_s=0.0)
        child = MpChild(plan)
        try:
            began = time.monotonic()
            child.start()
            took = time.monotonic() - began
            wait_all_ready([child], time.monotonic() + 30)
        finally:
            stop_all([child])
    if blocks:
        assert took >= 0.5
    else:
        assert took < 0.4


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in PEERS])
def test_every_strategy_brings_every_child_to_ready_and_reaps_it(strategy: str) -> None:
    with heavy_modules() as scratch:
        if strategy == "launch-forkserver":
            from launch._start.forkserver import FORKSERVER, prewarm

            prewarm(["launch.bench._child"])
            FORKSERVER.wait_warm()
        run = STRATEGIES[strategy](plans(scratch, 3, payload=200_000, **TINY), 60.0)
    assert run.ready_s >= TINY["init_s"]
    assert 0 <= run.started_s <= run.ready_s
    assert len(run.peak_rss_mib) == 3
    assert all(rss > 1 for rss in run.peak_rss_mib)


def test_locked_serialises_startup_and_the_others_do_not_wait_for_each_other() -> None:
    """``locked`` holds its lock across each child's whole startup: N children take at
    least N times one child's work, by construction."""
    with heavy_modules() as scratch:
        run = STRATEGIES["locked"](plans(scratch, 3, payload=1024, import_s=0.2, init_s=0.2), 60)
    assert run.ready_s >= 3 * 0.4


def test_a_baseline_reports_its_childs_failure() -> None:
    from launch.bench._strategies import BenchChildFailed

    with heavy_modules() as scratch:
        (plan,) = plans(scratch, 1, payload=0, **TINY)
        broken = ChildPlan("broken", "synthetic", {**plan.params, "crash_after_s": 0.0})
        with pytest.raises(BenchChildFailed, match="broken failed before READY") as info:
            STRATEGIES["threadpool"]([plan, broken], 30)
    assert "KeyError: 'stamp'" in str(info.value)


@pytest.mark.parametrize("policy", [p for p in TEARDOWN_POLICIES if p not in PEERS])
def test_teardown_policies_reap_every_child(policy: str) -> None:
    with heavy_modules() as scratch:
        run = TEARDOWN_POLICIES[policy](plans(scratch, 3, payload=1024, **TINY), 60)
    assert run.left == 0
    assert 0 <= run.noticed_s <= run.reaped_s
    if policy == "vllm-policy":
        assert run.reaped_s >= VLLM_WAIT_S  # the siblings never read their death pipes
    else:
        assert run.reaped_s < 2.0  # launch SIGTERMs un-ready children at once


def test_run_bench_fills_every_cell_and_states_the_claims(tmp_path: Path) -> None:
    config = BenchConfig(
        ns=(1, 2),
        strategies=("sequential", "launch-trio"),
        repeats=2,
        payloads=(1024,),
        teardown_n=0,
        focus_n=2,
        **TINY,
    )
    steps: list[str] = []

    class Record:
        def begin(self, total: int) -> None:
            steps.append(f"begin {total}")

        def step(self, label: str) -> None:
            pass

        def done(self, label: str, outcome: str) -> None:
            steps.append(label)

    result = run_bench(config, Record())
    assert steps[0] == "begin 8" and len(steps) == 9
    assert {(c.strategy, c.n) for c in result.startup} == {
        (s, n) for s in ("sequential", "launch-trio") for n in (1, 2)
    }
    assert all(len(c.ready_s) == 2 and not c.errors for c in result.startup)
    text = "\n".join(claims(result))
    assert "launch-trio at N=2 is" in text and "best baseline sequential" in text
    (_title, header, rows), *_ = tables(result)
    assert header == ["strategy", "N=1", "N=2"] and [r[0] for r in rows] == [
        "sequential",
        "launch-trio",
    ]
    loaded = BenchResult.read_json(result.write_json(tmp_path / "r.json"))
    assert loaded.startup == result.startup


def test_locked_is_skipped_for_collective_models_with_the_reason() -> None:
    from launch.bench._run import skip_reason

    assert skip_reason(BenchConfig(model="torch", ns=(1, 2)), "locked", 2) is not None
    assert skip_reason(BenchConfig(model="torch", ns=(1, 2)), "locked", 1) is None
    assert skip_reason(BenchConfig(), "locked", 8) is None


def test_bad_config_is_refused_with_the_name() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        BenchConfig(strategies=("fastest",))
    with pytest.raises(ValueError, match="N values must be >= 1"):
        BenchConfig(ns=(0,))


def cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch", "bench", "--plain", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_launch_bench_writes_table_json_and_plot(tmp_path: Path) -> None:
    proc = cli(
        tmp_path,
        "--strategies", ",".join(s for s in STRATEGIES if s not in PEERS),
        "--n", "1,2",
        "--repeats", "1",
        "--import-s", "0.05",
        "--init-s", "0.05",
        "--payload", "1KiB,128KiB",
        "--teardown-n", "2",
        "--teardown-repeats", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for strategy in STRATEGIES:
        assert (strategy in proc.stdout) == (strategy not in PEERS)
    assert "payload 128 KiB" in proc.stdout and "to all reaped" in proc.stdout
    assert "[28/31]" in proc.stderr  # progress: 7 strategies x 2 N x 2 payloads + 3 teardowns
    data = json.loads((tmp_path / "bench-synthetic.json").read_text())
    assert data["format"] == "launch-bench/1" and data["machine"]["cpus"] >= 1
    assert len(data["startup"]) == 28
    assert all(len(cell["ready_s"]) == 1 and not cell["errors"] for cell in data["startup"])
    assert [t["policy"] for t in data["teardown"]] == [  # a peer's only with the peer
        "launch-trio",
        "launch-asyncio",
        "vllm-policy",
    ]
    assert all(t["left"] == [0] for t in data["teardown"])
    assert (tmp_path / "bench-synthetic.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(
        [sys.executable, "-m", "launch", "bench", "--plain", "--report", "bench-synthetic.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert again.returncode == 0 and "launch-forkserver" in again.stdout


def test_launch_bench_refuses_bad_arguments(tmp_path: Path) -> None:
    proc = cli(tmp_path, "--strategies", "fastest")
    assert proc.returncode == 2 and "unknown strategy 'fastest'" in proc.stderr
    proc = cli(tmp_path, "--model", "gpu", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "needs visible NVIDIA GPUs" in proc.stderr
    proc = cli(tmp_path, "--report", "missing.json")
    assert proc.returncode == 2 and "missing.json" in proc.stderr


def test_torch_model_forms_a_group_under_launch_and_a_baseline(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    proc = cli(
        tmp_path,
        "--model", "torch",
        "--n", "2",
        "--strategies", "threadpool,launch-trio,locked",
        "--repeats", "1",
        "--teardown-n", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "bench-torch.json").read_text())
    cells = {cell["strategy"]: cell for cell in data["startup"]}
    assert len(cells["threadpool"]["ready_s"]) == 1 and len(cells["launch-trio"]["ready_s"]) == 1
    assert cells["locked"]["errors"][0].startswith("skipped")
    assert "locked N=2: skipped" in proc.stdout


def test_accelerator_trials_run_each_variant() -> None:
    config = BenchConfig(
        ns=(2,),
        strategies=("launch-trio",),
        repeats=1,
        payloads=(1024,),
        teardown_n=0,
        accelerators=True,
        shard_mib=2,
        **TINY,
    )
    result = run_bench(config)
    names = [cell.strategy for cell in result.accelerators]
    assert names == [
        "forkserver: spawn",
        "forkserver: cold",
        "forkserver: warm",
        "parent preload: import first",
        "parent preload: preload_modules",
        "prefetch: cold",
        "prefetch: prefetch",
        "prefetch: warm",
    ]
    assert all(len(cell.ready_s) == 1 and not cell.errors for cell in result.accelerators)
    # the parent-preload trials end only once the parent has imported the slow module
    preload = [c for c in result.accelerators if c.strategy.startswith("parent")]
    assert all(cell.ready_s[0] >= TINY["import_s"] for cell in preload)


# The peers (Ray, torch elastic). Last in the module: the Ray cluster that their tests
# share runs from the first of them to the end of the module.


def test_a_missing_peer_tool_skips_its_cells_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from launch.bench import _run, _strategies
    from launch.bench._report import notes

    monkeypatch.setitem(_strategies.PEER_TOOLS, "ray-actors", "no_such_tool_for_launch")
    monkeypatch.setattr(_run, "TEARDOWN_POLICIES", {"ray-actors": TEARDOWN_POLICIES["ray-actors"]})
    config = BenchConfig(
        ns=(1,), strategies=("ray-actors",), repeats=1, payloads=(1024,), teardown_n=2, **TINY
    )
    assert _run.teardown_policies(config) == ["ray-actors"]
    result = run_bench(config)
    reason = "skipped: no_such_tool_for_launch is not installed"
    assert [c.errors for c in result.startup] == [
        [reason + " (pip install no_such_tool_for_launch)"]
    ]
    assert result.teardown[0].errors[0].startswith(reason) and not result.teardown[0].reaped_s
    assert result.ray_init_s is None
    assert any(
        line.startswith("ray-actors N=1, payload 1 KiB: " + reason) for line in notes(result)
    )


def test_peer_teardowns_run_only_with_their_peer() -> None:
    from launch.bench._run import teardown_policies

    assert teardown_policies(BenchConfig(strategies=("launch-trio",))) == [
        "launch-trio",
        "launch-asyncio",
        "vllm-policy",
    ]
    assert teardown_policies(BenchConfig(strategies=("torchelastic",)))[-1] == "torchelastic"
    assert teardown_policies(BenchConfig(teardown_n=0)) == []


def _needs(strategy: str) -> None:
    pytest.importorskip({"ray-actors": "ray", "torchelastic": "torch"}[strategy])


@pytest.fixture(scope="module")
def ray_running() -> Iterator[float | None]:
    """One local Ray for the module's peer tests (its start costs seconds), up before each
    test's leak check begins; None (and no Ray) if ray is not installed."""
    try:
        from launch.bench._peers_ray import ray_cluster

        cluster = ray_cluster(4)
        init_s = cluster.__enter__()
    except ImportError:
        yield None
        return
    try:
        yield init_s
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture(params=PEERS)
def peer(request: pytest.FixtureRequest, ray_running: float | None) -> str:
    """Each peer strategy, skipped if its tool is not installed."""
    strategy: str = request.param
    _needs(strategy)
    return strategy


def test_each_peer_brings_every_child_to_ready_and_reaps_it(peer: str) -> None:
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with heavy_modules() as scratch:
        run = STRATEGIES[peer](plans(scratch, 2, payload=1024, **TINY), 120.0)
    assert run.ready_s >= TINY["init_s"]
    assert 0 <= run.started_s <= run.ready_s
    assert len(run.peak_rss_mib) == 2 and all(rss > 1 for rss in run.peak_rss_mib)
    # torch elastic installs its own handlers; the bench's (Ctrl-C) are back afterwards
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_a_peer_reports_its_childs_failure(peer: str) -> None:
    with heavy_modules() as scratch:
        (plan,) = plans(scratch, 1, payload=0, **TINY)
        broken = ChildPlan("broken", "synthetic", {**plan.params, "crash_after_s": 0.0})
        with pytest.raises(Exception, match="KeyError: 'stamp'"):
            STRATEGIES[peer]([plan, broken], 120)


def test_peer_teardowns_reap_every_child(peer: str) -> None:
    with heavy_modules() as scratch:
        run = TEARDOWN_POLICIES[peer](plans(scratch, 2, payload=1024, **TINY), 120)
    assert run.left == 0
    assert 0 <= run.noticed_s <= run.reaped_s < 60  # siblings initialise for 120 s


def test_run_bench_runs_the_peers_beside_launch(
    ray_running: float | None, capsys: pytest.CaptureFixture[str]
) -> None:
    from launch.bench._report import print_report

    _needs("torchelastic")
    _needs("ray-actors")
    assert ray_running is not None and ray_running > 0  # the fixture's own ray.init
    config = BenchConfig(
        ns=(2,),
        strategies=("ray-actors", "torchelastic", "launch-trio"),
        repeats=1,
        payloads=(1024,),
        teardown_n=0,
        focus_n=2,
        **TINY,
    )
    result = run_bench(config)
    assert [(c.strategy, len(c.ready_s), c.errors) for c in result.startup] == [
        ("ray-actors", 1, []),
        ("torchelastic", 1, []),
        ("launch-trio", 1, []),
    ]
    assert result.ray_init_s is None  # Ray was running already: used as it is
    assert any(
        "the peers: ray-actors" in line and "torchelastic" in line for line in claims(result)
    )
    result.ray_init_s = 2.5
    print_report(result, plain=True)
    out = capsys.readouterr().out
    assert "ray init (the local cluster, once per run) took 2.50s" in out
    assert "ray-actors" in out and "torchelastic" in out
