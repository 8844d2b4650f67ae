"""A sync killed with SIGKILL mid-way, then run again, ends where an uninterrupted one does."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import MotoS3, moto_s3

BUCKET = "crash"
PARAGRAPH = "Paragraph {n} of document {d} discusses topic{d}x{n} at some length. " * 12


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3() as server:
        docs = {
            f"doc{d:02}.md": "\n\n".join(PARAGRAPH.format(n=n, d=d) for n in range(6)).encode()
            for d in range(40)
        }
        server.make_bucket(BUCKET, docs)  # type: ignore[arg-type]
        yield server


def env_for(s3: MotoS3, data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGD_DATA_DIR": str(data),
        "RAGD_SOURCE": f"s3://{BUCKET}/",
        "RAGD_S3_ENDPOINT_URL": s3.endpoint_url,
        "RAGD_S3_ACCESS_KEY_ID": s3.access_key_id,
        "RAGD_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        "RAGD_S3_REGION": s3.region,
    }


def sync_cmd() -> list[str]:
    return [sys.executable, "-m", "rag_service.cli", "sync", "--inline"]


def chunk_ids(data: Path) -> list[str]:
    with sqlite3.connect(data / "instances" / "default" / "index" / "index.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT id FROM chunks ORDER BY id")]


def completed_items(data: Path) -> int:
    try:
        with sqlite3.connect(data / "ragd.db", timeout=5) as db:
            return int(
                db.execute("SELECT count(*) FROM items WHERE status='completed'").fetchone()[0]
            )
    except sqlite3.Error:
        return 0


def test_kill_minus_nine_then_rerun_matches_a_clean_run(tmp_path: Path, s3: MotoS3) -> None:
    clean = tmp_path / "clean"
    done = subprocess.run(
        sync_cmd(), env=env_for(s3, clean), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    reference = chunk_ids(clean)
    assert len(reference) > 40

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        sync_cmd(), env=env_for(s3, crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while completed_items(crashed) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sync ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = completed_items(crashed)
    assert 5 <= partial < 40

    rerun = subprocess.run(
        sync_cmd(),
        env=env_for(s3, crashed),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert chunk_ids(crashed) == reference  # same ids, none duplicated, none orphaned
    assert completed_items(crashed) == 40
    with sqlite3.connect(crashed / "ragd.db") as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    assert statuses == {"failed": 1, "completed": 1}  # the killed job is closed as interrupted
