"""A sync killed with SIGKILL mid-way (inline, or its worker), then run again, ends where an
uninterrupted one does."""

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

from rag_service.queue import health_check_key
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


REDIS_URL = "redis://127.0.0.1:6379/14"  # a database of its own, emptied by the worker test
HEALTH_KEY = health_check_key()


def env_for(s3: MotoS3, data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RAGD_REDIS_URL": REDIS_URL,
        "RAGD_INGEST_WINDOW_CHUNKS": "8",  # items complete a few at a time: a kill lands mid-sync
        "HF_HUB_OFFLINE": "1",
        "RAGD_DATA_DIR": str(data),
        "RAGD_SOURCE": f"s3://{BUCKET}/",
        "RAGD_S3_ENDPOINT_URL": s3.endpoint_url,
        "RAGD_S3_ACCESS_KEY_ID": s3.access_key_id,
        "RAGD_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        "RAGD_S3_REGION": s3.region,
    }


def ragd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rag_service.cli", *args]


def sync_cmd() -> list[str]:
    return ragd("sync", "--inline")


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, s3: MotoS3) -> list[str]:
    """The chunk ids of an uninterrupted sync."""
    clean = tmp_path_factory.mktemp("clean")
    done = subprocess.run(
        sync_cmd(), env=env_for(s3, clean), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    ids = chunk_ids(clean)
    assert len(ids) > 40
    return ids


def kill_when_some_items_are_done(proc: subprocess.Popen[bytes], data: Path) -> int:
    deadline = time.monotonic() + 300
    while completed_items(data) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sync ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = completed_items(data)
    assert 5 <= partial < 40
    return partial


def assert_like_a_clean_run(data: Path, reference: list[str]) -> None:
    assert chunk_ids(data) == reference  # same ids, none duplicated, none orphaned
    assert completed_items(data) == 40
    with sqlite3.connect(data / "ragd.db") as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    assert statuses == {"failed": 1, "completed": 1}  # the killed job is closed as interrupted


def test_kill_minus_nine_then_rerun_matches_a_clean_run(
    tmp_path: Path, s3: MotoS3, reference: list[str]
) -> None:
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        sync_cmd(), env=env_for(s3, crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    kill_when_some_items_are_done(proc, crashed)
    rerun = subprocess.run(
        sync_cmd(), env=env_for(s3, crashed), capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert_like_a_clean_run(crashed, reference)


def test_worker_killed_mid_sync_then_restarted_matches_a_clean_run(
    tmp_path: Path, s3: MotoS3, reference: list[str]
) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    data = tmp_path / "worker"
    env = env_for(s3, data)
    # The instance exists before the worker starts, so the worker's schedule syncs it at once
    # and the user's `ragd sync` below waits for that sync: the kill lands on both.
    assert (
        subprocess.run(ragd("instances"), env=env, capture_output=True, check=False).returncode == 0
    )
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(ragd("worker"), env=env, stdout=log, stderr=log)
    follower = subprocess.Popen(ragd("sync"), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
    try:
        kill_when_some_items_are_done(worker, data)
        # `ragd sync` notices that its worker is gone, and says what to do.
        _, stderr = follower.communicate(timeout=120)
        assert follower.returncode == 1
        assert b"the worker stopped" in stderr and b"rerun" in stderr
        worker = subprocess.Popen(ragd("worker"), env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not client.exists(HEALTH_KEY) and time.monotonic() < deadline:
            time.sleep(0.2)  # as a user waits for the worker to start
        # The dead worker's lock expires on its own; this sync waits for it, then carries on.
        rerun = subprocess.run(
            ragd("sync"), env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert rerun.returncode == 0, rerun.stderr
        assert_like_a_clean_run(data, reference)
    finally:
        for proc in (worker, follower):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
        client.flushdb()
        client.close()
