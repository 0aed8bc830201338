"""Sessions: ``nox`` runs what CI needs (demo, tests, server, lint, typecheck).

torch is pinned to 2.13.0 wherever it is installed: on the development machine that
version is a local CPU build, while an unpinned ``torch`` pulls the CUDA build (GBs).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["demo", "tests", "server", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]
TORCH = "torch==2.13.0"


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """`launch demo`: three stages of torch.distributed (gloo) workers, on the CPU."""
    session.install("-e", ".[torch,cli,plot]", TORCH)
    session.run("launch", "demo", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite under both backends (trio via pytest-trio, asyncio via anyio)."""
    session.install("-e", ".[dev,torch]", TORCH)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def server(session: nox.Session) -> None:
    """launch inside real servers: hypercorn (trio worker) and uvicorn, as subprocesses."""
    session.install("-e", ".[dev,server]")
    session.run("pytest", "tests/test_server.py", *session.posargs)


@nox.session(python=PYTHON)
def vllm(session: nox.Session) -> None:
    """launch's vLLM adapters against the real vllm==0.32.0 (CPU build; DEVELOPERS.md)."""
    session.install("-e", ".[dev]", "vllm==0.32.0", TORCH)
    # the wheel's torchvision/torchaudio/torchcodec binaries do not match the CPU torch
    session.run("pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    session.run("pytest", "tests/vllm", *session.posargs, env=env)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """`launch bench`: startup and teardown against today's strategies (not run by CI).

    ``nox -s bench -- --quick`` takes under a minute; ``-- --model torch`` times torch
    children; results land in bench-results/ (JSON and a plot).
    """
    session.install("-e", ".[torch,cli,plot]", TORCH)
    session.run("launch", "bench", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and its child side (torch installed: its types count)."""
    session.install("-e", ".[dev,torch,plot]", TORCH)
    session.run("mypy", "--strict", "launch", "_launch_child")
