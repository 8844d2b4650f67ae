"""Helpers of the fault matrix: private Redis and PostgreSQL servers that a test may kill and
restart, a small corpus, a slowed-down fake embedder, and snapshots of what a sync leaves (the
chunk ids and texts of the index, the items table) to compare with a clean run's."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from rag_service.models import Item, Job
from rag_service.providers.protocols import Vector
from rag_service.records import Sessions
from tests.fakes import HashingEmbedder

ItemRow = tuple[Any, ...]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_corpus(folder: Path, docs: int = 24, paragraphs: int = 4) -> Path:
    """`docs` Markdown files of a few chunks each, every paragraph with words of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        body = "\n\n".join(
            f"Paragraph {n} of document {d} discusses topic{d}x{n} and subject{n}y{d}. " * 10
            for n in range(paragraphs)
        )
        (folder / f"doc{d:02}.md").write_text(f"# Document {d}\n\n{body}\n")
    return folder


class SlowEmbedder(HashingEmbedder):
    """The hashing fake, `delay` seconds per call: a sync of a few windows lasts long enough for
    a fault to land in its middle. `calls` counts the document embedding calls made."""

    def __init__(self, delay: float = 0.2) -> None:
        super().__init__()
        self.delay = delay
        self.calls = 0

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        await asyncio.sleep(self.delay)
        self.calls += 1
        return await super().embed_documents(texts)

    async def wait_calls(self, n: int, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while self.calls < n:
            require(time.monotonic() < deadline, f"only {self.calls} embedding calls made")
            await asyncio.sleep(0.01)


# What a sync leaves behind


def index_chunks(index_file: Path) -> dict[str, str]:
    """Chunk id -> chunk text of a LocalIndex file (closed by its writer), read from the file
    itself, once SQLite has checked that its keyword (FTS5) side matches the chunks."""
    require(index_file.is_file(), f"{index_file} is missing")
    db = sqlite3.connect(index_file)
    try:
        try:
            db.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as exc:
            raise AssertionError(f"the keyword index disagrees with the chunks: {exc}") from exc
        rows = db.execute("SELECT id, json_extract(metadata, '$.text') FROM chunks").fetchall()
    finally:
        db.close()
    return dict(rows)


def local_index_file(data_dir: Path, instance_id: str) -> Path:
    return data_dir / "instances" / instance_id / "index" / "index.sqlite3"


def item_row(item: Item, with_source_stamp: bool = True) -> ItemRow:
    """What the items table says of an item; the etag and mtime only when both runs read the
    very same files (a re-upload makes a new mtime)."""
    row: tuple[Any, ...] = (
        item.id,
        item.instance_id,
        item.key,
        item.status,
        item.error,
        item.size,
        item.chunks_count,
        item.chunk_high_water,
        item.metadata_,
    )
    if with_source_stamp:
        row += (item.etag, item.last_modified)
    return row


async def items_table(
    sessions: Sessions, instance_id: str, with_source_stamp: bool = True
) -> list[ItemRow]:
    async with sessions() as session:
        rows = await session.scalars(select(Item).where(Item.instance_id == instance_id))
        return sorted(item_row(i, with_source_stamp) for i in rows.all())


def items_table_sqlite(
    db_file: Path, instance_id: str, with_source_stamp: bool = True
) -> list[ItemRow]:
    """The items table of a `ragd.db` written by another process."""
    cols = "id, instance_id, key, status, error, size, chunks_count, chunk_high_water, metadata"
    if with_source_stamp:
        cols += ", etag, last_modified"
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute(f"SELECT {cols} FROM items WHERE instance_id = ?", (instance_id,))
        out = []
        for row in rows.fetchall():
            fields = list(row)
            fields[8] = json.loads(fields[8]) if isinstance(fields[8], str) else fields[8]
            out.append(tuple(fields))
    return sorted(out)


def jobs_sqlite(db_file: Path, instance_id: str) -> list[tuple[str, str, str | None]]:
    """(id, status, end_reason) of the instance's jobs, oldest first."""
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute(
            "SELECT id, status, end_reason FROM jobs WHERE instance_id = ? ORDER BY started_at",
            (instance_id,),
        )
        return [tuple(r) for r in rows.fetchall()]  # type: ignore[misc]


async def jobs_of(sessions: Sessions, instance_id: str) -> list[Job]:
    async with sessions() as session:
        rows = await session.scalars(
            select(Job).where(Job.instance_id == instance_id).order_by(Job.started_at)
        )
        return list(rows.all())


async def wait_job_ended(
    sessions: Sessions,
    job_id: str,
    timeout: float,  # noqa: ASYNC109
) -> Job | None:
    """The job row once it has ended, else (after `timeout`) as it is, or None if it has none.
    Database errors while it is unreachable count as "not yet"."""
    deadline = time.monotonic() + timeout
    job: Job | None = None
    while time.monotonic() < deadline:
        try:
            async with sessions() as session:
                job = await session.get(Job, job_id)
        except Exception:  # the database may be restarting
            job = None
        if job is not None and job.status in ("completed", "failed"):
            return job
        await asyncio.sleep(0.1)
    return job


# Private servers a test may kill


class RedisServer:
    """A `redis-server` of the test's own on a free port, nothing kept on disk."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.binary is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return path


class PostgresCluster:
    """A PostgreSQL cluster of the test's own: its own data dir, port and socket dir, trust
    auth. Run as the `postgres` OS user when this process is root (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            import pwd

            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("no `postgres` OS user to run a PostgreSQL cluster as")
            if shutil.which("runuser") is None:
                pytest.skip("runuser is not installed")
        # Not under pytest's tmp dir: the postgres user could not enter it (0700, root's).
        self.root = Path(tempfile.mkdtemp(prefix="ragd-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if self.as_root:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}\n{done.stderr}"

    def init(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        if (self.data / "postmaster.pid").exists():
            cmd = [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"]
            if self.as_root:
                cmd = ["runuser", "-u", "postgres", "--", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def require(condition: object, message: str) -> None:
    """Stop a scenario that could not be set up or driven. `pytest.fail`, not an assertion: a
    test marked xfail(raises=AssertionError) must not count such a failure as its bug."""
    if not condition:
        pytest.fail(message, pytrace=False)


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        require(time.monotonic() < deadline, f"timed out waiting for {what}")
        time.sleep(every)


class AppServer:
    """An ASGI app served by uvicorn in this event loop on a port that stays the same across a
    stop and a start (tests/serving.py picks a new one each time)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app, self.port = app, port or free_port()
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(1000):
            if self._server.started:
                return
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        raise AssertionError("the server did not start")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.wait_for(self._task, timeout=30)
        self._task = None


async def clean_local_run(
    data_dir: Path,
    instance_id: str,
    folder: Path,
    config: dict[str, Any] | None = None,
    with_source_stamp: bool = True,
) -> tuple[dict[str, str], list[ItemRow]]:
    """The chunks (id -> text) and items of an uninterrupted sync of `folder` into a fresh data
    dir, with the hashing fake as embedder: what a faulted run must end up with."""
    from rag_service.config import Settings
    from rag_service.registry import Providers
    from rag_service.runtime import Runtime

    settings = Settings(data_dir=data_dir, source_roots=[folder.parent])
    embedder = HashingEmbedder()
    providers = Providers(settings, embedder_factory=lambda model, pooling: embedder)
    async with Runtime(settings, providers) as rt:
        await rt.instances.ensure(instance_id, str(folder), config)
        result = await rt.sync(instance_id)
        assert result.status == "completed" and not result.counts["error"], result.end_reason
        items = await items_table(rt.sessions, instance_id, with_source_stamp)
    chunks = index_chunks(local_index_file(data_dir, instance_id))
    assert len(chunks) >= len(items) > 0
    return chunks, items


def completed_items(db_file: Path, instance_id: str) -> int:
    """How many items of the instance a `ragd.db` written by another process holds completed."""
    try:
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5) as db:
            (n,) = db.execute(
                "SELECT count(*) FROM items WHERE instance_id = ? AND status = 'completed'",
                (instance_id,),
            ).fetchone()
            return int(n)
    except sqlite3.Error:
        return 0
