"""Sessions: plain ``nox`` runs what CI runs (``bash .ci/run``).

- ``demo``: ``launch demo`` with torch (Python 3.11).
- ``tests``: the suite under trio and asyncio, on 3.11, 3.12 and 3.13. torch is installed
  on 3.11 only (torch==2.13.0 has a local CPU build there; PyPI's is the CUDA one,
  several GB): elsewhere the torch tests skip and the core suite runs. Measured on 2
  busy cores: 5-6 min per Python (25 min for all of plain ``nox``, installs included).
- ``server``: launch inside hypercorn and uvicorn, and the docs' ASGI snippet.
- ``ray``: launch.integrations.ray on a simulated 3-node Ray cluster (about 1.5 min).
- ``docs``: the docs site (Sphinx, warnings are errors) into ``docs/_build/html``.
- ``wheel``: build the wheel, install only it in a fresh virtualenv, run ``launch``.
- ``lint`` (ruff) and ``typecheck`` (mypy --strict).

Not run by plain ``nox``: ``vllm`` and ``omni`` (large installs) and ``bench`` (figures,
not checks).
torch is pinned to 2.13.0 wherever it is installed; development tools come from the
dependency groups in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"  # nox.project.dependency_groups
nox.options.sessions = ["demo", "tests", "server", "ray", "docs", "wheel", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]
MAIN = "3.11"  # the one Python with a local CPU build of torch 2.13.0
TORCH = "torch==2.13.0"
PYPROJECT = nox.project.load_toml("pyproject.toml")


def group(*names: str) -> tuple[str, ...]:
    """The requirements of dependency groups of pyproject.toml."""
    return nox.project.dependency_groups(PYPROJECT, *names)


@nox.session(python=MAIN)
def demo(session: nox.Session) -> None:
    """`launch demo`: three stages of torch.distributed (gloo) workers, on the CPU."""
    session.install("-e", ".[torch,cli,plot]", TORCH)
    session.run("launch", "demo", *session.posargs)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite under both backends (trio via pytest-trio, asyncio via anyio)."""
    if session.python == MAIN:
        session.install("-e", ".[torch]", TORCH, *group("test"))
    else:
        session.install("-e", ".", *group("test"))
    session.run("pytest", "--durations=20", *session.posargs)


@nox.session(python=MAIN)
def server(session: nox.Session) -> None:
    """launch inside real servers: hypercorn (trio worker) and uvicorn, as subprocesses;
    and the docs' snippets that need the server extra."""
    session.install("-e", ".[server]", *group("test"))
    session.run("pytest", "tests/test_server.py", *session.posargs)
    session.run("pytest", "tests/test_docs.py", "-k", "embedding")  # the ASGI snippet


@nox.session(python=MAIN)
def docs(session: nox.Session) -> None:
    """The docs site: Sphinx with MyST, warnings as errors; ``docs/_build/html``."""
    session.install("-e", ".[cli,plot]", *group("docs"))
    out = Path("docs", "_build", "html")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "-d", "docs/_build/doctrees",
        "docs", str(out), *session.posargs,
    )  # fmt: skip
    session.log(f"open {out.resolve() / 'index.html'}")


@nox.session(python=MAIN)
def wheel(session: nox.Session) -> None:
    """Build the sdist and wheel; in a fresh virtualenv with only the wheel installed,
    ``launch --help`` and ``launch demo --no-torch`` work."""
    session.install("build")
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    (built,) = dist.glob("launch_tree-*.whl")
    venv = tmp / "fresh"
    session.run("python", "-m", "venv", "--clear", str(venv))
    pip, launch = str(venv / "bin" / "pip"), str(venv / "bin" / "launch")
    session.run(pip, "install", "--quiet", str(built), external=True)
    session.run(launch, "--help", external=True)
    session.run(launch, "--version", external=True)
    # from a directory without the source tree, so only the installed wheel is importable
    with session.chdir(tmp):
        env = {"LAUNCH_LOCK_DIR": str(tmp / "locks")}
        session.run(launch, "demo", "--no-torch", "--plain", external=True, env=env)


@nox.session(python=MAIN)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=MAIN)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and its child side (torch installed: its types count)."""
    session.install("-e", ".[torch,plot]", TORCH, *group("typecheck"))
    session.run("mypy", "--strict", "launch", "_launch_child")


@nox.session(python=MAIN)
def vllm(session: nox.Session) -> None:
    """launch's vLLM adapters against the real vllm==0.32.0 (CPU build; DEVELOPERS.md)."""
    # ray[default]: engines placed on a simulated Ray cluster (test_vllm_dp_ray.py, ~2 min)
    session.install("-e", ".[ray]", "vllm==0.32.0", TORCH, "ray[default]", *group("test"))
    # the wheel's torchvision/torchaudio/torchcodec binaries do not match the CPU torch
    session.run("pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    session.run("pytest", "tests/vllm", *session.posargs, env=env)
    session.run("pytest", "tests/test_docs.py", "-k", "vllm", env=env)  # docs/vllm.md


OMNI_VLLM_REQUIREMENTS = """
import sys
from importlib.metadata import requires
skip = ("torch", "torchvision", "torchaudio", "transformers", "xformers", "flashinfer",
        "nvidia", "cupy", "tilelang", "deep", "triton", "quack")
reqs = [r for r in requires("vllm") if "extra ==" not in r
        and not r.split(";")[0].strip().lower().startswith(skip)]
open(sys.argv[1], "w").write("\\n".join(reqs) + "\\n")
"""


@nox.session(python=MAIN)
def omni(session: nox.Session) -> None:
    """launch's vLLM-Omni config reader, Omni's stage process started by launch
    (open_omni_stages, stand-in worker) and Omni's engine on it (LaunchAsyncOmniEngine),
    against the one pair that imports on the CPU torch: vllm 0.22.1 + vllm-omni 0.22.0.
    vllm 0.22.1 pins torch 2.11.0 (a CUDA build here) and vllm-omni pins media packages
    its stage process does not import: both are installed without their dependencies."""
    session.install(TORCH, "transformers==4.57.6", "-e", ".", *group("test"))
    session.install("--no-deps", "vllm==0.22.1", "vllm-omni==0.22.0", "diffusers==0.38.0")
    # vllm's own requirements but torch, transformers and the CUDA kernels; vllm-omni's
    # light ones (left out: av, accelerate, soundfile, cache-dit, torchsde, openai-whisper,
    # imageio, x-transformers, onnxruntime, fa3-fwd: media and kernels it imports lazily)
    reqs = Path(session.create_tmp()) / "vllm-reqs.txt"
    session.run("python", "-c", OMNI_VLLM_REQUIREMENTS, str(reqs))
    session.install("-r", str(reqs), "omegaconf", "aenum==3.1.16", "einops", "prettytable",
                    "janus", "pydub")  # fmt: skip
    # the CUDA wheel finds no platform here: vLLM's CPU platform as a platform plugin
    plugin = Path("tests/vllm/omni_cpu_platform").resolve()
    env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "PYTHONPATH": str(plugin)}  # fmt: skip
    session.run("pytest", "tests/test_omni_config.py", "tests/vllm/test_omni_import.py",
                "tests/vllm/test_omni_process.py", "tests/vllm/test_omni_engine.py",
                "tests/vllm/test_vllm_import_compat.py", *session.posargs, env=env)  # fmt: skip


@nox.session(python=MAIN)
def ray(session: nox.Session) -> None:
    """launch.integrations.ray on a simulated cluster (a head and two nodes on this
    machine, ``ray.cluster_utils.Cluster``; the node-loss tests add and remove a third):
    about 2-3 minutes on 2 cores, cluster starts included."""
    # ray[default]: the tests read what is left in Ray through its state API (the dashboard)
    session.install("-e", ".[ray]", "ray[default]", *group("test"))
    session.run("pytest", "tests/ray_cluster", *session.posargs)


@nox.session(python=MAIN)
def bench(session: nox.Session) -> None:
    """`launch bench`: startup and teardown against today's strategies (not run by CI).

    ``nox -s bench -- --quick`` takes under a minute; ``-- --model torch`` times torch
    children; results land in bench-results/ (JSON and a plot).
    """
    session.install("-e", ".[torch,cli,plot]", TORCH, "ray==2.60.0")  # the Ray peer
    session.run("launch", "bench", *session.posargs)
