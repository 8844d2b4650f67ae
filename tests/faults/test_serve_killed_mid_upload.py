"""Fault 4: `ragd serve` killed (SIGKILL) during an upload, twice: half-way through the file, and
with the whole file sent but for the form's closing boundary.

`ragd serve` runs as the real command in a process of its own; the upload is a large multipart
form streamed slowly over a plain socket. After each kill the server is started again on the
same data dir. Then nothing of the partial uploads may be indexed or left where a sync would
pick it up, and uploading the file again and syncing ends with it indexed once, as a clean sync
of a folder holding the same file. The worker that `ragd serve` queues its jobs for runs in this
process (the hashing fake as embedder), on a Redis database of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from rag_service.config import Settings
from rag_service.providers.folder_source import FolderSource
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from rag_service.uploads import uploads_dir
from tests.fakes import HashingEmbedder
from tests.faults.support import (
    clean_local_run,
    free_port,
    index_chunks,
    items_table,
    local_index_file,
    require,
)
from workers.worker import build_worker

REDIS_URL = "redis://127.0.0.1:6379/13"  # a database of its own, emptied before and after
TOKEN = "fault-matrix-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/accounts/a/ai-search/instances"
NAME = "big.txt"
BOUNDARY = "ragd-fault-boundary"


def big_file() -> bytes:
    """About 1.5 MB of text, every line with words of its own."""
    lines = [
        f"Line {n} of the large upload records measurement{n} taken at station{n % 97}."
        for n in range(20_000)
    ]
    return ("\n".join(lines) + "\n").encode()


class Serve:
    """`ragd serve` in a process of its own."""

    def __init__(self, data: Path, port: int, log: Path) -> None:
        self.port, self.log = port, log
        env = {
            **os.environ,
            "RAGD_API_TOKENS": TOKEN,
            "RAGD_REDIS_URL": REDIS_URL,
            "HF_HUB_OFFLINE": "1",
            "RAGD_SYNC_COOLDOWN_S": "0",
        }  # fmt: skip  (two syncs within 30 s below)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rag_service.cli", "serve", "--port", str(port),
                 "--data-dir", str(data)],
                env=env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.url) as http:
            while True:
                require(self.proc.poll() is None, self.log.read_text()[-3000:])
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        return
                require(time.monotonic() < deadline, "ragd serve did not start")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the process and whatever it started (its extraction workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


async def upload_killed_at(serve: Serve, data: bytes, cut: int) -> None:
    """Stream a multipart upload of `data` slowly; SIGKILL the server once `cut` bytes of the
    file have gone out (the rest of the body never does)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{NAME}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    request = (
        f"POST {API}/up/items HTTP/1.1\r\nHost: 127.0.0.1:{serve.port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(head) + len(data) + len(tail)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
    try:
        writer.write(request + head)
        sent, piece = 0, 64 * 1024
        while sent < cut:
            writer.write(data[sent : min(cut, sent + piece)])
            await writer.drain()
            sent = min(cut, sent + piece)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the server has read what was sent
        require(serve.proc.poll() is None, "ragd serve stopped before it was killed")
        serve.kill()
        with contextlib.suppress(OSError):
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # no answer came
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def job_ended(http: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict[str, Any]:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        resp = await http.get(f"{API}/up/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()["result"]
        if job["status"] in ("completed", "failed"):
            return job
        require(time.monotonic() < deadline, f"job {job_id} did not end: {job}")
        await asyncio.sleep(0.1)


async def sync(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.post(f"{API}/up/jobs", json={})
    assert resp.status_code == 200, resp.text
    return await job_ended(http, resp.json()["result"]["id"])


@contextlib.asynccontextmanager
async def worker_for(settings: Settings) -> AsyncIterator[Runtime]:
    """The worker `ragd serve` queues its jobs for, in this process."""
    embedder = HashingEmbedder()
    rt = Runtime(settings, Providers(settings, embedder_factory=lambda model, pooling: embedder))
    worker = build_worker(settings, runtime=rt, handle_signals=False, poll_delay=0.05)
    worker.cron_jobs = []  # no scheduled syncs: only the ones this test asks for run
    worker.health_check_interval = 0.2
    task = asyncio.create_task(worker.main())
    try:
        yield rt
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


def leftovers(folder: Path) -> list[str]:
    """Every file under the instance's upload area, hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def test_ragd_serve_killed_during_an_upload(tmp_path: Path) -> None:
    started = time.monotonic()
    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.flushdb()
    except Exception as exc:  # redis-py raises several types for an unreachable server
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    data_dir, port = tmp_path / "data", free_port()
    settings = Settings(data_dir=data_dir, redis_url=REDIS_URL, api_tokens=TOKEN)
    upload = big_file()
    servers: list[Serve] = []
    try:
        servers.append(Serve(data_dir, port, tmp_path / "serve.log"))
        await servers[-1].ready()
        async with httpx.AsyncClient(base_url=servers[-1].url, headers=AUTH) as http:
            created = await http.post(API, json={"id": "up"})
            assert created.status_code == 200, created.text
        folder = uploads_dir(settings, "up")
        for cut in (len(upload) // 2, len(upload)):  # half-way; all but the closing boundary
            await asyncio.wait_for(upload_killed_at(servers[-1], upload, cut), timeout=60)
            assert not folder.exists() or leftovers(folder) == []  # nothing half-written
            servers.append(Serve(data_dir, port, tmp_path / "serve.log"))
            await servers[-1].ready()
        async with (
            worker_for(settings) as rt,
            httpx.AsyncClient(base_url=servers[-1].url, headers=AUTH, timeout=60) as http,
        ):
            # A sync finds nothing to index: no partial file is in the instance's source.
            assert [o async for o in FolderSource(folder).list_objects()] == []
            first = await sync(http)
            assert first["status"] == "completed", first
            assert first["counts"]["listed"] == 0, first
            assert await items_table(rt.sessions, "up") == []
            # The whole file, uploaded again, then a sync: indexed once.
            form = {"wait_for_completion": "true"}
            files = {"file": (NAME, upload, "text/plain")}
            resp = await http.post(f"{API}/up/items", data=form, files=files)
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"]["status"] == "completed", resp.text
            second = await sync(http)
            assert second["status"] == "completed", second
            assert second["counts"]["listed"] == 1 and second["counts"]["unchanged"] == 1
            listed = (await http.get(f"{API}/up/items")).json()
            assert [i["key"] for i in listed["result"]] == [NAME]
            items = await items_table(rt.sessions, "up", with_source_stamp=False)
            [stamped] = await items_table(rt.sessions, "up")
            info = await FolderSource(folder).stat(NAME)
            assert info is not None and info.size == len(upload)
            assert stamped[-2:] == (info.etag, info.last_modified)  # the file as it is now
        assert leftovers(folder) == [NAME]
        chunks = index_chunks(local_index_file(data_dir, "up"))
    finally:
        for server in servers:
            server.kill()
        await redis.flushdb()
        await redis.aclose()
    clean = tmp_path / "clean-src"
    clean.mkdir()
    (clean / NAME).write_bytes(upload)
    reference = await clean_local_run(tmp_path / "clean", "up", clean, with_source_stamp=False)
    assert chunks == reference[0]  # indexed once: the same ids and texts as a clean sync
    assert items == reference[1]
    assert time.monotonic() - started < 90
