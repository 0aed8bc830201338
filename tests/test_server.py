"""launch inside real ASGI servers: hypercorn with its trio worker and uvicorn (asyncio),
run as subprocesses on loopback with examples/server_app.py (the omni pipeline)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import alive

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("hypercorn")
pytest.importorskip("trio")

EXAMPLES = Path(__file__).parent.parent / "examples"
# uvicorn ends a SIGTERM-ed server by re-raising SIGTERM once it has shut down gracefully
GRACEFUL = (0, -signal.SIGTERM)
SERVERS = {
    "hypercorn-trio": ["-m", "hypercorn", "-k", "trio", "--bind", "127.0.0.1:{port}"],
    "uvicorn": ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One server process running examples/server_app.py."""

    def __init__(self, kind: str, tmp_path: Path, exit_on_failure: bool = False) -> None:
        self.port = free_port()
        args = [a.format(port=self.port) for a in SERVERS[kind]]
        env = {
            **os.environ,
            "PYTHONPATH": str(EXAMPLES),
            "LAUNCH_LOCK_DIR": str(tmp_path / "locks"),
            "LAUNCH_EXIT_ON_FAILURE": "1" if exit_on_failure else "0",
        }
        self.log = (tmp_path / f"{kind}.log").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, *args, "server_app:app"],
            cwd=EXAMPLES,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def wait_health(self, status: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.output()}"
            try:
                response = self.get("/health")
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if response.status_code == status:
                body: dict[str, Any] = response.json()
                return body
            time.sleep(0.1)
        raise AssertionError(f"no /health {status} within {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture(params=list(SERVERS))
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    made: list[Server] = []

    def make(kind: str, **kw: Any) -> Server:
        server = Server(kind, tmp_path, **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def pids(body: dict[str, Any]) -> dict[str, int]:
    return {child["name"]: child["pid"] for child in body["children"]}


def gone(all_pids: dict[str, int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in all_pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(pid) for pid in all_pids.values())


def test_the_server_runs_the_pipeline_and_sigterm_reaps_every_child(
    server_kind: str, make_server: Any
) -> None:
    server = make_server(server_kind)
    body = server.wait_health(200)
    children = pids(body)
    assert sorted(children) == ["talker-0", "thinker-0", "thinker-1", "vocoder-0"]
    assert all(alive(pid) for pid in children.values())
    stages = server.get("/").json()["stages"]
    assert stages["thinker"]["thinker-1"]["devices"] == "0,1"
    assert stages["vocoder"]["vocoder-0"]["role"] == "vocoder"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) in GRACEFUL, server.output()
    assert gone(children), server.output()


def test_the_server_notices_a_dead_child(server_kind: str, make_server: Any) -> None:
    server = make_server(server_kind)
    children = pids(server.wait_health(200))
    os.kill(children["talker-0"], signal.SIGKILL)
    body = server.wait_health(503, timeout=20)
    assert body["status"] == "failed"
    assert "child 'talker-0' of group 'talker'" in body["error"]
    assert "died after READY" in body["error"]
    assert gone(children)  # its siblings were torn down with it
    assert server.get("/health").status_code == 503  # and the server still answers
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) in GRACEFUL, server.output()


def test_exit_on_failure_shuts_the_server_down_non_zero(server_kind: str, make_server: Any) -> None:
    server = make_server(server_kind, exit_on_failure=True)
    children = pids(server.wait_health(200))
    os.kill(children["thinker-1"], signal.SIGKILL)
    code = server.proc.wait(30)
    # hypercorn 0.18's master loses its worker's exit code (3) and exits 0
    assert code == (3 if server_kind == "uvicorn" else 0), server.output()
    assert gone(children)
    assert "launch: pipeline 'omni' failed while serving: child 'thinker-1'" in server.output()
