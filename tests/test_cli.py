"""`ragd` as a user runs it: real processes, real models, a real folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

RAGD = [sys.executable, "-m", "rag_service.cli"]


def ragd(
    *args: str, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [*RAGD, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
        check=False,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "volcanoes.md").write_text(
        "Olympus Mons on Mars is the tallest volcano in the Solar System, about 22 km high."
    )
    (root / "coffee.txt").write_text(
        "Espresso is brewed by forcing hot water through fine coffee grounds."
    )
    (root / "broken.docx").write_text("plain text pretending to be a Word document")
    return root


def test_sync_search_json_and_resync(tmp_path: Path, folder: Path) -> None:
    data = tmp_path / "data"
    env = {"RAGD_SOURCE": str(folder)}
    old_umask = os.umask(0o022)  # a common default: files 0644, readable by everyone
    try:
        first = ragd("sync", "--inline", data_dir=data, env=env)
    finally:
        os.umask(old_umask)
    assert first.returncode == 0, first.stderr
    assert "2 indexed" in first.stderr and "1 errors" in first.stderr
    # The data dir (database, chunk text, index) is its owner's alone.
    assert data.stat().st_mode & 0o777 == 0o700
    written = [p for p in data.rglob("*")]
    assert written and all(p.stat().st_mode & 0o077 == 0 for p in written), [
        (str(p), oct(p.stat().st_mode)) for p in written if p.stat().st_mode & 0o077
    ]
    assert "broken.docx" in first.stderr and "not a DOCX" in first.stderr

    found = ragd("search", "What is the tallest volcano?", "--json", data_dir=data, env=env)
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)  # stdout holds the JSON object and nothing else
    assert set(result) == {"chunks", "search_query", "query_kind"}
    assert result["chunks"][0]["item"]["key"] == "volcanoes.md"
    assert result["chunks"][0]["scoring_details"]["vector_rank"] == 1

    unknown = ragd("search", "x", data_dir=data, env={**env, "RAGD_BACKNED": "cloudflare"})
    assert unknown.returncode == 2 and "did you mean RAGD_BACKEND" in unknown.stderr

    second = ragd("sync", "--inline", data_dir=data, env=env)
    assert (
        second.returncode == 0 and "0 indexed" in second.stderr and "3 unchanged" in second.stderr
    )

    (folder / "coffee.txt").write_text("Green tea is best brewed below boiling point.")
    os.utime(folder / "coffee.txt", (time.time() + 5, time.time() + 5))
    (folder / "volcanoes.md").unlink()
    third = ragd("sync", "--inline", data_dir=data, env=env)
    assert "1 indexed" in third.stderr and "1 deleted" in third.stderr, third.stderr
    gone = json.loads(
        ragd("search", "tallest volcano Olympus Mons", "--json", data_dir=data).stdout
    )
    assert all(c["item"]["key"] != "volcanoes.md" for c in gone["chunks"])

    jobs = ragd("jobs", "--limit", "2", data_dir=data, env={"COLUMNS": "200"})
    assert jobs.returncode == 0, jobs.stderr
    rows = [line for line in jobs.stdout.splitlines() if " user " in line]
    assert len(rows) == 2 and all("completed" in r for r in rows)
    assert "1 indexed" in rows[0] and "1 deleted" in rows[0]  # the latest first


def test_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    no_worker = ragd(
        "sync", data_dir=tmp_path / "d1", env={"RAGD_REDIS_URL": "redis://127.0.0.1:6379/14"}
    )
    assert no_worker.returncode == 1 and "no worker is running" in no_worker.stderr
    never = ragd("search", "anything", data_dir=tmp_path / "d0")
    assert never.returncode == 1 and "never synced: run `ragd sync default`" in never.stderr
    out = ragd("sync", "no-such-instance", "--inline", data_dir=tmp_path / "data")
    assert out.returncode == 1
    assert out.stderr.strip() == "error: instance 'no-such-instance' not found"
    missing = ragd(
        "sync", "--inline", data_dir=tmp_path / "d2", env={"RAGD_SOURCE": str(tmp_path / "nope")}
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr
