"""The placement seam of open_group and pipeline stages, without a cluster: validation,
the pipeline file's ``[stage.placement]`` table, and the order a placement is entered and
left in (a recording placement that starts children on this machine).

The Ray placement itself runs on a simulated cluster in tests/ray_cluster.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from procs import alive

import launch
from launch import ProcessSpec, StageSpec
from launch._start.spawn import Spawned, Starter, start_child

HAS_RAY = importlib.util.find_spec("ray") is not None


class Refused(RuntimeError):
    """What the recording placement raises when told to refuse."""


class Recording:
    """A placement that starts its children here, recording what happens and when."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.events: list[str] = []
        self.started: list[str] = []
        self.pids: list[int] = []

    def open(self, specs: Sequence[ProcessSpec], group: str) -> Any:
        self.events.append(f"open {group} {[s.name for s in specs]}")
        return self._open(group)

    @asynccontextmanager
    async def _open(self, group: str) -> AsyncIterator[Starter]:
        self.events.append(f"reserve {group}")
        if self.refuse:
            raise Refused(f"no room for {group}")

        async def start(
            spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None
        ) -> Spawned:
            self.started.append(spec.name)
            spawned = await start_child(spec, group, overlay)
            self.pids.append(spawned.process.pid)
            return spawned

        try:
            yield start
        finally:
            # every child is reaped before the placement is left
            self.events.append(f"release {group} alive={[p for p in self.pids if alive(p)]}")


def serve(name: str) -> ProcessSpec:
    return ProcessSpec("targets:serve", name=name)


# --- validation ---


def test_open_group_refuses_what_is_not_a_placement() -> None:
    with pytest.raises(TypeError, match=r"open_group 'dp': placement must be .* got dict"):
        launch.open_group([serve("w0")], name="dp", placement={"bundles": []})  # type: ignore[arg-type]


def test_a_stage_refuses_what_is_not_a_placement() -> None:
    with pytest.raises(TypeError, match=r"stage 'enc': placement must be .* got str"):
        StageSpec("enc", [serve("e0")], placement="ray")  # type: ignore[arg-type]


def test_a_stage_with_both_placement_and_devices_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"stage 'enc': devices \['0', '1'\] cannot be used"
    ) as info:
        StageSpec("enc", [serve("e0")], devices=[0, 1], placement=Recording())
    assert "device locks are this machine's" in str(info.value)
    assert "bundles" in str(info.value)


@pytest.mark.anyio
async def test_a_ray_placement_with_fewer_bundles_than_children_is_refused_by_the_call() -> None:
    from launch.integrations.ray import RayPlacement

    placement = RayPlacement([{"CPU": 1}])
    with pytest.raises(ValueError, match=r"group 'dp': 2 children for 1 bundles"):
        launch.open_group([serve("w0"), serve("w1")], name="dp", placement=placement)
    stage = StageSpec("enc", [serve("e0"), serve("e1")], placement=placement)
    with pytest.raises(ValueError, match=r"group 'enc': 2 children for 1 bundles"):
        launch.open_pipeline(launch.PipelineSpec([stage]))


# --- the seam: entered before any start, left after every reap ---


@pytest.mark.anyio
async def test_a_group_starts_through_its_placement_and_leaves_it_after_the_reap() -> None:
    placement = Recording()
    async with launch.open_group([serve("w0"), serve("w1")], name="dp", placement=placement) as g:
        assert sorted(placement.started) == ["w0", "w1"]
        assert placement.events == ["open dp ['w0', 'w1']", "reserve dp"]
        assert g.started_at is not None
    assert placement.events[-1] == "release dp alive=[]"
    assert [c.exitcode for c in g.children] == [0, 0]


@pytest.mark.anyio
async def test_a_failing_group_is_torn_down_before_its_placement_is_left() -> None:
    placement = Recording()
    specs = [serve("ok"), ProcessSpec("targets:crash", name="bad", kwargs={"delay": 0.3})]
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="dp", placement=placement):
            pytest.fail("entered")
    assert info.value.first.name == "bad"
    assert placement.events[-1] == "release dp alive=[]"


@pytest.mark.anyio
async def test_a_placement_that_cannot_reserve_raises_as_itself_and_starts_nothing() -> None:
    placement = Recording(refuse=True)
    with pytest.raises(Refused, match="no room for dp"):
        async with launch.open_group([serve("w0")], name="dp", placement=placement):
            pytest.fail("entered")
    assert placement.started == []


@pytest.mark.anyio
async def test_a_placed_stage_starts_through_its_placement_the_others_here() -> None:
    placement = Recording()
    spec = launch.PipelineSpec(
        [
            StageSpec("local", [serve("l0")]),
            StageSpec("placed", [serve("p0"), serve("p1")], after="local", placement=placement),
        ]
    )
    async with launch.open_pipeline(spec) as pipeline:
        assert sorted(placement.started) == ["p0", "p1"]
        assert pipeline.waiting == {"local": None, "placed": None}
        assert all(c.state is launch.ChildState.READY for c in pipeline.children)
    assert placement.events[-1] == "release placed alive=[]"


@pytest.mark.anyio
async def test_a_stage_whose_placement_cannot_reserve_fails_the_pipeline_with_it() -> None:
    spec = launch.PipelineSpec(
        [
            StageSpec("local", [serve("l0")]),
            StageSpec("placed", [serve("p0")], placement=Recording(refuse=True)),
        ]
    )
    with pytest.raises(Refused, match="no room for placed"):
        async with launch.open_pipeline(spec):
            pytest.fail("entered")


# --- the pipeline file's [stage.placement] ---

PLACED = """
[[stage]]
name = "enc"
target = "targets:serve"
replicas = 2
{extra}
[stage.placement]
{placement}
"""
GOOD = 'backend = "ray"\nbundles = [{CPU = 1}, {CPU = 1, GPU = 0.5, node_a = 1}]'


def _load(tmp_path: Path, placement: str, extra: str = "") -> launch.PipelineSpec:
    path = tmp_path / "pipe.toml"
    path.write_text(PLACED.format(placement=placement, extra=extra))
    return launch.load_pipeline(path)


@pytest.mark.skipif(not HAS_RAY, reason="building a RayPlacement from a file needs ray")
def test_a_file_places_a_stage_on_ray(tmp_path: Path) -> None:
    from launch.integrations.ray import RayPlacement

    spec = _load(
        tmp_path,
        GOOD + '\nstrategy = "STRICT_SPREAD"\naddress = "10.0.0.1:6379"\nplacement_timeout = 30',
    )
    placement = spec["enc"].placement
    assert placement == RayPlacement(
        [{"CPU": 1}, {"CPU": 1, "GPU": 0.5, "node_a": 1}],
        strategy="STRICT_SPREAD",
        address="10.0.0.1:6379",
        placement_timeout=30,
    )
    defaults = _load(tmp_path, GOOD)["enc"].placement
    assert isinstance(defaults, RayPlacement)
    assert (defaults.strategy, defaults.address, defaults.placement_timeout) == (
        "PACK",
        "auto",
        300.0,
    )


@pytest.mark.parametrize(
    ("placement", "extra", "key", "words"),
    [
        ('backend = "k8s"\nbundles = [{CPU = 1}]', "", "placement.backend", "unknown placement"),
        ("bundles = [{CPU = 1}, {CPU = 1}]", "", "placement.backend", "is required"),
        ('backend = "ray"', "", "placement.bundles", "is required"),
        ('backend = "ray"\nbundles = []', "", "placement.bundles", "a non-empty list"),
        ('backend = "ray"\nbundles = [{CPU = 1}]', "", "placement.bundles", "1 bundles for 2"),
        ('backend = "ray"\nbundles = [{CPU = 1}, 3]', "", "placement.bundles", "bundle 1 must"),
        ('backend = "ray"\nbundles = [{CPU = 1}, {}]', "", "placement.bundles", "bundle 1 must"),
        (
            'backend = "ray"\nbundles = [{CPU = 1}, {CPU = "one"}]',
            "",
            "placement.bundles",
            "bundle 1: 'CPU' must be a finite number >= 0",
        ),
        (
            'backend = "ray"\nbundles = [{CPU = 1}, {CPU = -1}]',
            "",
            "placement.bundles",
            "finite number >= 0",
        ),
        (
            'backend = "ray"\nbundles = [{CPU = 1}, {CPU = inf}]',
            "",
            "placement.bundles",
            "finite number >= 0",
        ),
        (GOOD + "\nplacement_timeout = 0", "", "placement.placement_timeout", "> 0"),
        (GOOD + '\nplacement_timeout = "none"', "", "placement.placement_timeout", "forever"),
        (GOOD + "\nstrategy = 3", "", "placement.strategy", "a non-empty string"),
        (GOOD + "\nbundle = 1", "", "placement.bundle", "did you mean 'bundles'"),
        (GOOD, "devices = [0, 1]", "devices", "cannot be used with a placement"),
    ],
)
def test_a_bad_placement_table_names_file_stage_and_key(
    tmp_path: Path, placement: str, extra: str, key: str, words: str
) -> None:
    with pytest.raises(launch.ConfigError) as info:
        _load(tmp_path, placement, extra)
    error = info.value
    assert (error.stage, error.key) == ("enc", key), str(error)
    assert words in str(error)
    assert str(error).startswith(f"{tmp_path / 'pipe.toml'}: stage 'enc': key '{key}': ")


@pytest.mark.skipif(not HAS_RAY, reason="RayPlacement's own checks run only with ray")
def test_a_strategy_ray_does_not_know_is_named(tmp_path: Path) -> None:
    with pytest.raises(launch.ConfigError) as info:
        _load(tmp_path, GOOD + '\nstrategy = "pack"')
    assert info.value.key == "placement.strategy"
    assert "unknown strategy 'pack'" in str(info.value)


def test_a_ray_placement_without_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # find_spec then reports it missing
    with pytest.raises(launch.ConfigError) as info:
        _load(tmp_path, GOOD)
    assert info.value.key == "placement.backend"
    assert "pip install 'launch-tree[ray]'" in str(info.value)
