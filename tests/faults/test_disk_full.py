"""Fault 5: the disk fills up during `ragd sync --inline`, then the sync is run again with room.

"Full" is a file size limit (RLIMIT_FSIZE) on the sync's process, with SIGXFSZ ignored so that
a write past it fails with EFBIG as on a full disk instead of killing the process. Two limits:
256 KiB, which the metadata database's WAL stays under while the local index's cannot (its
window of ~50 chunks needs ~500 KiB of WAL): the disk fills while writing the index; and 64 KiB,
which the database's WAL outgrows too. The data dir (database and default instance) exists
before the limited sync, as on a disk that filled up under a running installation.

Every run is the real `ragd` in a process of its own with the shipped MiniLM model: the corpus is
tiny. The runs of both limits and of the clean reference go side by side (a module fixture);
each test asserts on what one limit left."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.support import (
    ItemRow,
    index_chunks,
    items_table_sqlite,
    jobs_sqlite,
    local_index_file,
    require,
)

LIMITS = {"index": 256 * 1024, "database": 64 * 1024}
# Sets the limit and ignores SIGXFSZ, then becomes `ragd` (both survive exec).
LIMITED = (
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'rag_service.cli', *sys.argv[2:]])\n"
)


def write_corpus(folder: Path) -> None:
    """One manual of ~50 chunks (a window the index cannot write under 256 KiB) and five notes
    of one chunk each."""
    folder.mkdir()
    sections = [
        " ".join(f"Section {n} of the manual explains part{n}w{w} carefully." for w in range(30))
        for n in range(24)
    ]
    (folder / "manual.md").write_text("# Manual\n\n" + "\n\n".join(sections) + "\n")
    for d in range(5):
        (folder / f"note{d}.txt").write_text(
            f"Note {d} says kettle{d} boils water for tea{d}. " * 8
        )


@dataclass
class Run:
    returncode: int = 0
    stderr: str = ""


@dataclass
class Observed:
    limited: Run = field(default_factory=Run)  # the sync under the limit
    limited_jobs: list[tuple[str, str, str | None]] = field(default_factory=list)
    limited_items: list[ItemRow] = field(default_factory=list)
    rerun: Run = field(default_factory=Run)  # the sync after, with room
    jobs: list[tuple[str, str, str | None]] = field(default_factory=list)
    chunks: dict[str, str] = field(default_factory=dict)
    items: list[ItemRow] = field(default_factory=list)


def ragd(data: Path, folder: Path, *args: str, limit: int | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGD_SOURCE": str(folder)}
    cli = [sys.executable, "-c", LIMITED, str(limit)] if limit else [
        sys.executable, "-m", "rag_service.cli"]  # fmt: skip
    return subprocess.Popen(
        [*cli, *args, "--data-dir", str(data)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process and whatever it started (its extraction workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> Run:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    return Run(proc.returncode, err)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Observed]]:
    """Both limits and the clean reference (key "clean"), run side by side."""
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("disk-full")
    folder = tmp / "src"
    write_corpus(folder)
    data = {name: tmp / name for name in (*LIMITS, "clean")}
    seen = {name: Observed() for name in data}
    procs: list[subprocess.Popen[str]] = []
    try:
        # The database and the default instance exist before the disk fills.
        procs = [ragd(data[name], folder, "instances") for name in LIMITS]
        for proc in procs:
            require(finish(proc).returncode == 0, "`ragd instances` failed")
        procs = [
            ragd(data["clean"], folder, "sync", "--inline"),
            *(ragd(data[n], folder, "sync", "--inline", limit=LIMITS[n]) for n in LIMITS),
        ]
        clean, *limited = (finish(p) for p in procs)
        require(clean.returncode == 0, f"the clean sync failed: {clean.stderr[-2000:]}")
        for name, run in zip(LIMITS, limited, strict=True):
            seen[name].limited = run
            db = data[name] / "ragd.db"
            seen[name].limited_jobs = jobs_sqlite(db, "default")
            seen[name].limited_items = items_table_sqlite(db, "default")
        procs = [ragd(data[n], folder, "sync", "--inline") for n in LIMITS]
        for name, proc in zip(LIMITS, procs, strict=True):
            seen[name].rerun = finish(proc)
        for name in data:
            seen[name].jobs = jobs_sqlite(data[name] / "ragd.db", "default")
            seen[name].items = items_table_sqlite(data[name] / "ragd.db", "default")
            seen[name].chunks = index_chunks(local_index_file(data[name], "default"))
    finally:
        for proc in procs:
            stop(proc)
    require(time.monotonic() - started < 240, "the disk-full runs took too long")
    yield seen


def test_disk_full_while_writing_the_index(observed: dict[str, Observed]) -> None:
    seen, clean = observed["index"], observed["clean"]
    # The sync went on past the failed index write and ended, saying what failed.
    assert seen.limited.returncode in (0, 1), seen.limited.stderr[-2000:]
    [(_, status, reason)] = seen.limited_jobs
    assert status in ("completed", "failed") and reason, (status, reason)
    errors = {row[2]: row[4] for row in seen.limited_items if row[3] == "error"}
    assert errors, f"no write failed under the limit: {seen.limited_items}"
    assert all("index write failed" in e for e in errors.values()), errors
    assert "Traceback" not in seen.limited.stderr, seen.limited.stderr[-2000:]
    # With room again, the next sync redoes what failed, and only that.
    assert seen.rerun.returncode == 0, seen.rerun.stderr[-2000:]
    assert [j[1] for j in seen.jobs] == [status, "completed"], seen.jobs
    assert f"{len(errors)} indexed" in seen.rerun.stderr, seen.rerun.stderr
    assert seen.chunks == clean.chunks  # same ids and texts: none duplicated, missing or stale
    assert seen.items == clean.items


def test_disk_full_for_the_database_too(observed: dict[str, Observed]) -> None:
    seen, clean = observed["database"], observed["clean"]
    # The sync stopped with an error (its process was not killed by the limit's signal).
    assert seen.limited.returncode == 1, seen.limited.stderr[-2000:]
    # With room again, the next sync closes the job the full disk left open and redoes it all.
    assert seen.rerun.returncode == 0, seen.rerun.stderr[-2000:]
    assert len(seen.jobs) == 2 and seen.jobs[1][1] == "completed", seen.jobs
    assert seen.jobs[0][1] == "failed" and seen.jobs[0][2], seen.jobs
    assert seen.chunks == clean.chunks
    assert seen.items == clean.items
