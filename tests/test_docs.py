"""The docs run: every fenced ``python`` block of README.md and docs/ is executed, and the
API reference names every public name.

A block that is not a whole program declares how it runs in an HTML comment on the line
before its fence (DEVELOPERS.md lists the options), e.g.
``<!-- snippet: setup=tp_specs async -->``. Blocks run as scripts in a subprocess, in a
scratch directory that also holds the ``file=`` blocks of the same document.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import launch
import launch.testing

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(\s*)(```+)\s*([\w{}-]*)")
OPTIONS = re.compile(r"^\s*<!--\s*snippet:(.*?)-->\s*$")
EXTRAS = {
    "vllm": "launch-tree[vllm]",
    "starlette": "launch-tree[server]",
    "torch": "launch-tree[torch] torch==2.13.0",
    "nox": "nox",
}

# Setups name what a fragment uses. Each is plain Python run before the block, in the
# scratch directory (so it may write modules there).
SETUPS = {
    "tp_specs": """
        import anyio

        import launch

        specs = [
            launch.ProcessSpec("launch.testing.targets:serve", name=f"worker-{rank}")
            for rank in range(2)
        ]
    """,
    "omni_spec": """
        import launch
        from launch.testing import misbehaving

        spec = launch.PipelineSpec(
            [
                launch.StageSpec("thinker", [misbehaving("serve", "thinker-0")]),
                launch.StageSpec("talker", [misbehaving("serve", "talker-0")], after=("thinker",)),
            ],
            name="omni",
        )
    """,
    "alert": """
        def alert(exc):
            print("a child died:", exc)
    """,
    "mypkg": """
        import pathlib

        import launch

        pathlib.Path("mypkg").mkdir(exist_ok=True)
        pathlib.Path("mypkg/__init__.py").write_text("")
        pathlib.Path("mypkg/engine.py").write_text(
            "import launch\\n\\ndef run():\\n    launch.ready()\\n    launch.wait_for_stop()\\n"
        )
    """,
    # a stand-in module named like the heavy one the text talks about
    "stub_transformers": """
        import pathlib

        pathlib.Path("transformers.py").write_text("class AutoTokenizer:\\n    pass\\n")
    """,
    "omni_prompt": """
        prompt_token_ids = [151644, 872, 198]
    """,
    # vllm-omni 0.30.0's deploy/qwen2_5_omni.yaml (tests/data/omni), in the scratch directory
    "omni_deploy": f"""
        import shutil

        shutil.copy({str(ROOT / "tests/data/omni/deploy/qwen2_5_omni.yaml")!r}, ".")
    """,
}


@dataclass
class Snippet:
    """One fenced python block and how it runs."""

    document: Path
    line: int
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def parse(document: Path) -> list[Snippet]:
    """The python blocks of ``document``, with the options of the comment before each."""
    lines = document.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    index = 0
    previous = ""  # the last non-blank line before the fence
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                previous = lines[index]
            index += 1
            continue
        _indent, ticks, language = match.groups()
        start = index
        index += 1
        body = []
        while index < len(lines) and not lines[index].strip().startswith(ticks):
            body.append(lines[index])
            index += 1
        index += 1
        if language == "python":
            options = {}
            if (comment := OPTIONS.match(previous)) is not None:
                for token in comment.group(1).split():
                    key, _, value = token.partition("=")
                    options[key] = value
            code = textwrap.dedent("\n".join(body)) + "\n"
            snippets.append(Snippet(document, start + 1, code, options))
        previous = ""
    return snippets


SNIPPETS = [snippet for document in DOCUMENTS for snippet in parse(document)]
KNOWN = {"setup", "async", "file", "excerpt", "pytest", "needs", "gpus"}


def _visible_gpus() -> int:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return len(out.stdout.splitlines()) if out.returncode == 0 else 0


def _installed(distribution: str) -> bool:
    # not importlib.util.find_spec: tests/vllm would pass for vllm, as a namespace package
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _skip_reason(snippet: Snippet) -> str | None:
    for module in filter(None, snippet.options.get("needs", "").split(",")):
        if not _installed(module):
            install = EXTRAS.get(module, module)
            return f"needs {module} (pip install '{install}'), not installed here"
    gpus = int(snippet.options.get("gpus") or 0)
    if gpus and _visible_gpus() < gpus:
        return f"needs {gpus} GPU(s) and the model it names"
    return None


def _script(snippet: Snippet) -> str:
    setups = [name for name in snippet.options.get("setup", "").split(",") if name]
    parts = [textwrap.dedent(SETUPS[name]) for name in setups]
    if "async" in snippet.options:
        parts.append(
            "async def _snippet():\n"
            + textwrap.indent(snippet.code, "    ")
            + "\n\nanyio.run(_snippet)\n"
        )
        parts.insert(0, "import anyio\n")
    else:
        parts.append(snippet.code)
    return "\n".join(parts)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LAUNCH_LOCK_DIR": str(cwd / "locks"), "PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _code_lines(text: str) -> list[str]:
    """Lines without comments and blank lines, stripped: what an excerpt must match."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_every_block_declares_known_options() -> None:
    for snippet in SNIPPETS:
        unknown = set(snippet.options) - KNOWN
        assert not unknown, f"{snippet.id}: unknown snippet option(s) {sorted(unknown)}"
        for name in filter(None, snippet.options.get("setup", "").split(",")):
            assert name in SETUPS, f"{snippet.id}: no setup named {name!r}"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    if "excerpt" in snippet.options:
        source = _code_lines((ROOT / snippet.options["excerpt"]).read_text())
        wanted = _code_lines(snippet.code)
        position = 0
        for line in wanted:  # in order, each line found after the previous one
            assert line in source[position:], f"{snippet.id}: not in the file: {line!r}"
            position = source.index(line, position) + 1
        return
    if "file" in snippet.options:
        compile(snippet.code, snippet.options["file"], "exec")  # run by its document's blocks
        return
    reason = _skip_reason(snippet)
    if reason is not None:
        pytest.skip(reason)
    for other in SNIPPETS:  # the modules this document's blocks import
        if other.document == snippet.document and "file" in other.options:
            path = tmp_path / other.options["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(other.code)
    if "pytest" in snippet.options:
        (tmp_path / "test_snippet.py").write_text(snippet.code)
        result = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    else:
        (tmp_path / "snippet.py").write_text(_script(snippet))
        result = _run([sys.executable, "snippet.py"], tmp_path)
    assert result.returncode == 0, f"{snippet.id}:\n{result.stdout}\n{result.stderr}"


def test_the_reference_names_every_public_name() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:\w+):: ([\w.]+)", text, re.MULTILINE))
    missing = [f"launch.{name}" for name in launch.__all__ if f"launch.{name}" not in documented]
    missing += [
        f"launch.testing.{name}"
        for name in launch.testing.__all__
        if f"launch.testing.{name}" not in documented
    ]
    assert not missing, f"docs/api.md does not document {missing}"
