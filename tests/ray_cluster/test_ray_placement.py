"""Children placed on a simulated Ray cluster through launch.integrations.ray."""

from __future__ import annotations

import json
import pickle
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from conftest import live_actors, node_with, wait_ray_clean
from procs import alive
from ray_helpers import GROUP, Remote, spec

import launch
from _launch_child._protocol import Failed
from launch.integrations._ray_process import estimate_offset
from launch.integrations.ray import (
    PlacementError,
    RayNode,
    RayPlacement,
    RayProcess,
    open_placement,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_cluster")]

A_AND_B = RayPlacement(
    [{"CPU": 1, "node_a": 0.5}, {"CPU": 1, "node_b": 0.5}], strategy="STRICT_SPREAD"
)


async def test_children_start_on_their_nodes_ready_and_stop() -> None:
    specs = [spec("ray_targets:where", "w0"), spec("ray_targets:where", "w1")]
    async with open_placement(A_AND_B, n_children=2) as placed:
        remotes: list[Remote] = []
        try:
            async with anyio.create_task_group() as tg:

                async def start(i: int) -> None:
                    remotes.append(Remote(await placed.spawn(i, specs[i], GROUP), specs[i]))

                for i in range(2):
                    tg.start_soon(start, i)
            remotes.sort(key=lambda r: r.spec.name)
            payloads = [await r.payload() for r in remotes]
            for remote, payload, resource in zip(
                remotes, payloads, ("node_a", "node_b"), strict=True
            ):
                process = remote.process
                assert isinstance(process, RayProcess)
                assert process.node.node_id == node_with(resource)
                assert payload["pid"] == process.pid
                assert alive(process.pid)
                # the child's parent is its host actor, a Ray worker
                host = psutil.Process(payload["ppid"])
                assert host.cmdline()[0].startswith("ray::ChildHost")
                # Ray leaves killing the child's tree to launch; the child keeps Ray's default
                assert host.environ()["RAY_kill_child_processes_on_worker_exit"] == "0"
                assert "RAY_kill_child_processes_on_worker_exit" not in (
                    psutil.Process(payload["pid"]).environ()
                )
                assert abs(process.clock_offset) < 0.5  # one machine: one clock
                kinds = [type(m).__name__ for m in remote.messages]
                assert kinds == ["Booted", "Phase", "Ready"], kinds
            codes = [await r.stop() for r in remotes]
        finally:
            for r in remotes:
                r.close()
        assert codes == [0, 0]
        assert not any(alive(p["pid"]) for p in payloads)
    wait_ray_clean()


async def test_a_crash_reports_its_traceback_and_exit_code() -> None:
    crash = spec("targets:crash", "bad")
    async with open_placement(RayPlacement([{"CPU": 1, "node_b": 0.5}]), n_children=1) as placed:
        remote = Remote(await placed.spawn(0, crash, GROUP), crash)
        try:
            message = await remote.boot()
            assert isinstance(message, Failed)
            report = message.report
            assert report.type_name == "RuntimeError"
            assert "weights file is corrupt" in report.traceback
            assert "in crash" in report.traceback
            assert report.phase == "load_model"
            assert await remote.exited() == 1
        finally:
            remote.close()
    wait_ray_clean()


@pytest.mark.parametrize(
    ("bundles", "strategy", "unplaceable", "words"),
    [
        ([{"CPU": 0.1}] * 4, "STRICT_SPREAD", [], "STRICT_SPREAD needs a node per bundle"),
        ([{"CPU": 1}, {"CPU": 1, "TPU": 1}], "PACK", [1], "bundle 1 {CPU: 1, TPU: 1} fits on no"),
    ],
    ids=["strict-spread-4-on-3-nodes", "missing-resource"],
)
async def test_an_unsatisfiable_placement_fails_in_time_naming_the_bundles(
    bundles: list[dict[str, float]], strategy: str, unplaceable: list[int], words: str
) -> None:
    placement = RayPlacement(bundles, strategy=strategy, placement_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(PlacementError) as info:
        async with open_placement(placement):
            pytest.fail("placed")
    assert time.monotonic() - started < 2.0 + 10.0  # the timeout, plus the cleanup
    error = info.value
    assert error.unplaceable == unplaceable
    assert words in str(error)
    assert f"Ray could not place {len(bundles)} bundles ({strategy})" in str(error)
    assert "node_a: 1" in error.cluster and "node_b: 1" in error.cluster
    wait_ray_clean()


async def test_kill_group_kills_the_child_and_a_grandchild_that_left_its_group() -> None:
    family = spec("ray_targets:with_grandchild", "family")
    async with open_placement(RayPlacement([{"CPU": 1, "node_a": 0.5}])) as placed:
        remote = Remote(await placed.spawn(0, family, GROUP), family)
        try:
            payload = await remote.payload()
            assert alive(payload["grandchild"])
            remote.process.kill_group()
            assert await remote.exited() == -signal.SIGKILL
            await _gone(payload["pid"], payload["grandchild"], within=5.0)
        finally:
            remote.close()
    wait_ray_clean()


async def test_send_signal_reaches_the_child_on_its_node() -> None:
    child = spec("ray_targets:where", "sig")
    async with open_placement(RayPlacement([{"CPU": 1, "node_b": 0.5}])) as placed:
        remote = Remote(await placed.spawn(0, child, GROUP), child)
        try:
            await remote.payload()
            remote.process.send_signal(signal.SIGTERM)
            assert await remote.exited() == 128 + signal.SIGTERM  # the bootstrap's SystemExit
        finally:
            remote.close()
    wait_ray_clean()


async def _gone(*pids: int, within: float) -> None:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if alive(pid)]
        await anyio.sleep(0.05)


def _host_actor(child_pid: int) -> psutil.Process:
    host = psutil.Process(child_pid).parent()
    assert host is not None and host.cmdline()[0].startswith("ray::ChildHost")
    return host


async def test_a_silent_host_is_a_lost_node_and_its_child_goes_when_it_wakes() -> None:
    child = spec("ray_targets:where", "stuck")
    async with open_placement(RayPlacement([{"CPU": 1, "node_a": 0.5}])) as placed:
        remote = Remote(await placed.spawn(0, child, GROUP), child)
        try:
            payload = await remote.payload()
            host = _host_actor(payload["pid"])
            host.suspend()  # no more heartbeats: a partitioned or frozen node
            try:
                started = time.monotonic()
                assert await remote.exited(timeout=10.0) is None
                assert 2.0 < time.monotonic() - started < 8.0
                note = remote.process.exit_unknown
                assert note is not None and "no heartbeat" in note
                assert remote.process.node.node_id[:12] in note
                remote.close()  # the driver gives the child up
            finally:
                host.resume()
            await _gone(payload["pid"], within=5.0)  # the host, awake, sees the driver gone
        finally:
            remote.close()
    wait_ray_clean()


async def test_a_killed_host_actor_is_a_lost_child_whose_tree_goes_too() -> None:
    family = spec("ray_targets:with_grandchild", "orphaned")
    async with open_placement(RayPlacement([{"CPU": 1, "node_b": 0.5}])) as placed:
        remote = Remote(await placed.spawn(0, family, GROUP), family)
        try:
            payload = await remote.payload()
            _host_actor(payload["pid"]).kill()
            assert await remote.exited(timeout=5.0) is None
            assert "connection closed" in (remote.process.exit_unknown or "")
            await _gone(payload["pid"], payload["grandchild"], within=5.0)
        finally:
            remote.close()
    wait_ray_clean()


async def test_the_driver_drops_connections_with_a_wrong_token_or_garbage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the real host actor connects, strangers connect to the child's listener:
    each is closed unread, and the child still starts."""
    from launch.integrations import _ray_wire
    from launch.integrations import ray as ray_integration

    monkeypatch.setattr(ray_integration, "_HELLO_TIMEOUT_S", 1.0)
    real = ray_integration.PlacedGroup._create_actor
    strangers: list[socket.socket] = []

    def create_actor(self: Any, index: int, address: tuple[str, int], token: bytes) -> Any:
        wrong = bytes(b ^ 1 for b in token)
        for data in (
            _ray_wire.hello(_ray_wire.ROLE_CONTROL, wrong),  # a wrong token
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 100,  # garbage
            b"\xff\xff\xff\xff" + pickle.dumps(("node", "x", "y", 1)),  # a frame, no hello
            _ray_wire.MAGIC + b"X" + token,  # the right token, an unknown role
            b"",  # nothing at all: dropped after the hello timeout
        ):
            sock = socket.create_connection(address, timeout=5.0)
            sock.sendall(data)
            strangers.append(sock)
        return real(self, index, address, token)

    monkeypatch.setattr(ray_integration.PlacedGroup, "_create_actor", create_actor)
    child = spec("ray_targets:where", "w")
    async with open_placement(RayPlacement([{"CPU": 1, "node_a": 0.5}])) as placed:
        remote = Remote(await placed.spawn(0, child, GROUP), child)
        try:
            assert (await remote.payload())["pid"] == remote.process.pid
            for sock in strangers:  # each was closed by the driver, without an answer
                assert await anyio.to_thread.run_sync(_closed_by_peer, sock)
            assert await remote.stop() == 0
        finally:
            remote.close()
            for sock in strangers:
                sock.close()
    wait_ray_clean()


def _closed_by_peer(sock: socket.socket) -> bool:
    """True if the peer closed ``sock`` (EOF, or a reset: it closed with our bytes
    unread) without sending anything."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


async def test_the_leak_check_counts_a_placed_child() -> None:
    """The Ray-aware leak check ignores Ray's processes, not launch's children on a node."""
    from conftest import _RayAwareWatch

    watch = _RayAwareWatch()
    child = spec("ray_targets:where", "counted")
    async with open_placement(RayPlacement([{"CPU": 1, "node_b": 0.5}])) as placed:
        remote = Remote(await placed.spawn(0, child, GROUP), child)
        try:
            pid = (await remote.payload())["pid"]
            leftover = {proc.pid for proc in watch.leftovers()}
            assert pid in leftover  # the child
            assert _host_actor(pid).pid in leftover  # its host actor
            assert await remote.stop() == 0
        finally:
            remote.close()
    wait_ray_clean()


DRIVER = Path(__file__).with_name("ray_driver.py")


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_sigkilled_driver_leaves_no_child_on_any_node_within_5s(
    ray_cluster: Any, backend: str
) -> None:
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), backend, ray_cluster.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(driver, timeout=120.0)
        started = json.loads(line)
        pids = started["pids"] + started["grandchildren"]
        hosts = [_host_actor(pid).pid for pid in started["pids"]]
        assert all(alive(pid) for pid in pids + hosts)
        driver.kill()
        driver.wait(timeout=10)
        killed = time.monotonic()
        deadline = killed + 5.0
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [_describe(pid) for pid in pids if alive(pid)]
        assert not left, f"outlived the driver by 5 s: {left} (started: {started})"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        assert driver.stdout is not None
        driver.stdout.close()
    wait_ray_clean(timeout=30.0)  # Ray kills a dead driver's actors and placement groups
    deadline = time.monotonic() + 10.0
    while any(alive(pid) for pid in hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [_describe(pid) for pid in hosts if alive(pid)]


def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{pid} {proc.status()} ppid={proc.ppid()} {' '.join(proc.cmdline())[:80]}"
    except psutil.Error as exc:
        return f"{pid} {exc}"


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the driver printed nothing in {timeout:g}s"
    line = proc.stdout.readline()
    assert line, f"the driver exited with {proc.wait()} before its children were READY"
    return line


def test_clock_offset_is_the_remote_reading_less_the_round_trips_middle() -> None:
    # The remote clock runs 100 s ahead; answers are read at the middle of each trip.
    samples = [(10.0, 110.5, 11.0), (20.0, 120.1, 20.2), (30.0, 130.25, 30.5)]
    offset, rtt = estimate_offset(samples)
    assert rtt == pytest.approx(0.2)  # the shortest trip is used
    assert offset == pytest.approx(100.0)
    # a reading taken late in its trip is off by at most half the trip
    offset, _ = estimate_offset([(0.0, 101.0, 1.0)])
    assert offset == pytest.approx(100.5)
    with pytest.raises(ValueError):
        estimate_offset([])
    with pytest.raises(ValueError):
        estimate_offset([(1.0, 5.0, 0.5)])
    process = RayProcess(1, RayNode("n" * 56, "10.0.0.2"), None, clock_offset=100.0)  # type: ignore[arg-type]
    assert process.to_local(130.0) == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"bundles": []}, "must not be empty"),
        ({"bundles": {"CPU": 1}}, "must be a list"),
        ({"bundles": [{}]}, "bundle 0 must be a non-empty"),
        ({"bundles": [{"CPU": -1}]}, "'CPU' must be a finite non-negative number"),
        ({"bundles": [{"CPU": float("nan")}]}, "finite non-negative"),
        ({"bundles": [{"CPU": True}]}, "finite non-negative"),
        ({"bundles": [{"CPU": 0}]}, "asks for nothing"),
        ({"bundles": [{"": 1}]}, "non-empty strings"),
        ({"bundles": [{"CPU": 1}], "strategy": "pack"}, "unknown strategy 'pack'"),
        ({"bundles": [{"CPU": 1}], "placement_timeout": 0}, "finite positive"),
        ({"bundles": [{"CPU": 1}], "placement_timeout": float("inf")}, "finite positive"),
    ],
)
def test_a_malformed_placement_is_refused_at_construction(
    kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        RayPlacement(**kwargs)


def test_a_placement_is_a_frozen_value() -> None:
    placement = RayPlacement([{"CPU": 1, "GPU": 1}] * 2, strategy="STRICT_SPREAD")
    assert placement == RayPlacement([{"CPU": 1, "GPU": 1}] * 2, strategy="STRICT_SPREAD")
    with pytest.raises(AttributeError):
        placement.strategy = "PACK"  # type: ignore[misc]


# --- through open_group and open_pipeline ---


async def test_open_group_places_children_ready_on_two_nodes_with_a_timeline() -> None:
    specs = [spec("ray_targets:where", "w0", delay=0.2), spec("ray_targets:where", "w1")]
    async with launch.open_group(specs, name="dp", placement=A_AND_B) as group:
        for child, resource in zip(group.children, ("node_a", "node_b"), strict=True):
            assert isinstance(child.node, RayNode)
            assert child.node.node_id == node_with(resource)
            assert child.payload["pid"] == child.pid
            assert alive(child.pid)
            assert child.phase == "init"
        timeline = group.timeline
        assert len(live_actors()) == 2  # one host actor per child, while the group runs
    assert [c.exitcode for c in group.children] == [0, 0]
    assert not any(alive(c.payload["pid"]) for c in group.children)
    tracks = timeline.children
    assert [t.name for t in tracks] == ["w0", "w1"]
    for track in tracks:
        # the node's times, moved onto the driver's clock, in order after the group's start
        assert track.ready is not None and track.ready > 0
        starts = [s.start for s in track.slices]
        assert starts == sorted(starts) and starts[0] >= 0, track.slices
        assert any(s.kind == "phase" and s.name == "init" for s in track.slices)
    assert timeline.all_ready == max(t.ready for t in tracks if t.ready is not None)
    wait_ray_clean()


async def test_a_crash_on_one_node_tears_down_the_sibling_on_the_other(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    specs = [
        spec("targets:stop_then_exit", "ok", marker=str(marker)),
        spec("targets:crash", "bad", delay=2.0),
    ]
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="dp", placement=A_AND_B):
            pytest.fail("entered")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed)
    assert first.name == "bad"
    assert first.exitcode == 1
    assert "weights file is corrupt" in (first.remote_traceback or "")
    assert "in crash" in (first.remote_traceback or "")
    assert first.phase == "load_model"
    assert [f.name for f in info.value.exceptions] == ["bad"]  # type: ignore[attr-defined]
    # the sibling on node_a got the group's cooperative stop (before its actor was killed)
    assert marker.read_text() == "stopped cooperatively"
    wait_ray_clean()


async def test_an_unplaceable_group_raises_placement_error_and_leaves_nothing() -> None:
    placement = RayPlacement([{"CPU": 0.1}] * 4, strategy="STRICT_SPREAD", placement_timeout=2.0)
    specs = [spec("ray_targets:where", f"w{i}") for i in range(4)]
    with pytest.raises(PlacementError) as info:
        async with launch.open_group(specs, name="dp", placement=placement):
            pytest.fail("entered")
    assert "Ray could not place 4 bundles (STRICT_SPREAD)" in str(info.value)
    assert "bundles: 0: {CPU: 0.1}, 1: {CPU: 0.1}" in str(info.value)
    assert info.value.bundles == [{"CPU": 0.1}] * 4
    wait_ray_clean()


async def test_a_lost_node_is_a_child_died_naming_the_node() -> None:
    specs = [spec("ray_targets:where", "ok"), spec("ray_targets:where", "lost")]
    host: psutil.Process | None = None
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="dp", placement=A_AND_B) as group:
            node = group["lost"].node
            host = _host_actor(group["lost"].pid or 0)
            host.suspend()  # its heartbeats stop: the node is lost to the driver
            try:
                await anyio.sleep(30)
                pytest.fail("the lost node went unnoticed")
            finally:
                host.resume()
    first = info.value.first
    assert isinstance(first, launch.ChildDied)
    assert first.name == "lost"
    assert isinstance(node, RayNode)
    assert node.node_id[:12] in str(first) and "lost contact" in str(first)
    wait_ray_clean()


async def test_a_pipeline_stage_placed_on_the_cluster_after_a_local_one() -> None:
    pipeline_spec = launch.PipelineSpec(
        [
            launch.StageSpec("local", [spec("targets:serve", "l0")]),
            launch.StageSpec(
                "placed",
                [spec("ray_targets:where", "p0"), spec("ray_targets:where", "p1")],
                after="local",
                placement=A_AND_B,
            ),
        ],
        name="pipe",
    )
    async with launch.open_pipeline(pipeline_spec) as pipeline:
        assert pipeline["local"]["l0"].node is None
        nodes = [child.node for child in pipeline["placed"]]
        assert [getattr(n, "node_id", None) for n in nodes] == [
            node_with("node_a"),
            node_with("node_b"),
        ]
        assert pipeline["placed"]["p0"].payload["pid"] == pipeline["placed"]["p0"].pid
    assert [c.exitcode for c in pipeline.children] == [0, 0, 0]
    wait_ray_clean()


PIPELINE_FILE = """
[pipeline]
name = "filed"
ready_timeout = 60

[[stage]]
name = "dp"
target = "ray_targets:where"
replicas = 2

[stage.placement]
backend = "ray"
bundles = [{CPU = 1, node_a = 0.5}, {CPU = 1, node_b = 0.5}]
strategy = "STRICT_SPREAD"
placement_timeout = 60
"""


async def test_a_pipeline_file_places_a_stage(tmp_path: Path) -> None:
    path = tmp_path / "pipe.toml"
    path.write_text(PIPELINE_FILE)
    pipeline_spec = launch.load_pipeline(path)
    async with launch.open_pipeline(pipeline_spec) as pipeline:
        nodes = [child.node for child in pipeline["dp"]]
        assert [getattr(n, "node_id", None) for n in nodes] == [
            node_with("node_a"),
            node_with("node_b"),
        ]
    assert [c.exitcode for c in pipeline.children] == [0, 0]
    wait_ray_clean()
