"""ragd on several hosts: two `ragd serve` and two `ragd worker` processes, each with its own
empty data dir, sharing nothing but PostgreSQL (metadata, API tokens, the similarity cache, the
keyword index), Redis (the queue and the instances' locks), the Cloudflare API (the fake, over
HTTP: Workers AI and Vectorize) and an S3 endpoint (moto: the R2 source and the uploads bucket).

A sync queued through API 1 runs on one worker; that worker is killed mid-sync and the other
takes the job over and finishes it; both APIs then give the same hybrid results; an upload
through API 2 is found through API 1; an answer cached by API 1 is a cache hit on API 2."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.cloudflare.fake_api import FakeCloudflare
from tests.s3_server import MotoS3, moto_s3
from tests.serving import free_port, serve

TOKEN = "cluster-token-0123456789"
REDIS_URL = "redis://127.0.0.1:6379/12"  # a database of its own, emptied before and after
API = "/accounts/any/ai-search/namespaces/default/instances"
DOCS_BUCKET, UPLOADS_BUCKET = "cluster-docs", "cluster-uploads"
TOPICS = ["kayak", "lantern", "compass", "tent", "stove", "canoe", "rope", "boots"]
PARAGRAPH = "The {t} of document {d} is described in part {n}: {t} care, {t} storage and use. "
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3() as server:
        docs = {
            f"gear/{TOPICS[d % len(TOPICS)]}-{d:02}.md": "\n\n".join(
                PARAGRAPH.format(t=TOPICS[d % len(TOPICS)], d=d, n=n) * 6 for n in range(4)
            ).encode()
            for d in range(40)
        }
        server.make_bucket(DOCS_BUCKET, docs)  # type: ignore[arg-type]
        server.make_bucket(UPLOADS_BUCKET)
        yield server


@dataclass
class Host:
    """One `ragd` process with its own data dir and log."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    started: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rag_service.cli", *self.args],
                env=self.env, stdout=out, stderr=out,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def host_env(tmp: Path, name: str, pg_url: str, fake: FakeCloudflare, s3: MotoS3) -> dict[str, str]:
    data = tmp / name
    data.mkdir()
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGD_DATA_DIR": str(data),  # empty: each host has its own
        "RAGD_DATABASE_URL": pg_url,
        "RAGD_REDIS_URL": REDIS_URL,
        "RAGD_BACKEND": "cloudflare",
        "RAGD_KEYWORD_INDEX": "postgres",
        "RAGD_CLOUDFLARE_ACCOUNT_ID": fake.account,
        "RAGD_CLOUDFLARE_API_TOKEN": fake.token,
        "RAGD_CLOUDFLARE_API_BASE": fake.base_url,
        "RAGD_S3_ENDPOINT_URL": s3.endpoint_url,
        "RAGD_S3_ACCESS_KEY_ID": s3.access_key_id,
        "RAGD_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        "RAGD_S3_REGION": s3.region,
        "RAGD_UPLOADS_BUCKET": f"s3://{UPLOADS_BUCKET}/managed",
        "RAGD_API_TOKENS": TOKEN,
        "RAGD_SYNC_COOLDOWN_S": "0",
        "RAGD_INGEST_WINDOW_CHUNKS": "4",  # items complete a few at a time: a kill lands mid-sync
    }


@pytest.fixture
async def cluster(
    tmp_path: Path, pg_url: str, s3: MotoS3
) -> AsyncIterator[tuple[FakeCloudflare, list[Host], list[Host]]]:
    fake = FakeCloudflare()
    fake.faults.latency = 0.5  # each call takes a while: the sync lasts long enough to kill
    queue = redis.Redis.from_url(REDIS_URL)
    queue.flushdb()
    async with serve(fake) as url:
        fake.base_url = url
        apis, workers = [], []
        for n in (1, 2):
            port = free_port()
            env = host_env(tmp_path, f"api{n}", pg_url, fake, s3)
            apis.append(Host(f"api{n}", ["serve", "--port", str(port)], env,
                             tmp_path / f"api{n}.log", port=port))  # fmt: skip
            env = host_env(tmp_path, f"worker{n}", pg_url, fake, s3)
            workers.append(Host(f"worker{n}", ["worker"], env, tmp_path / f"worker{n}.log"))
        try:
            for host in (*apis, *workers):  # all at once: they migrate the database together
                host.start()
            async with httpx.AsyncClient(timeout=30) as http:
                for api in apis:
                    await until(lambda api=api: healthy(http, api), 120, f"{api.name} is up")
            yield fake, apis, workers
        finally:
            for host in (*apis, *workers):
                host.stop()
            queue.flushdb()
            queue.close()
            for host in (*apis, *workers):
                print(f"--- {host.name}\n{host.text()[-3000:]}")


async def healthy(http: httpx.AsyncClient, api: Host) -> bool:
    assert api.proc is not None and api.proc.poll() is None, api.text()
    try:
        return (await http.get(f"{api.url}/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def until(check: Any, timeout: float, what: str) -> Any:  # noqa: ASYNC109
    """Poll the async `check` until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting until {what}")


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()["result"] if "result" in resp.json() else resp.json()


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def runner_of(job_id: str, workers: list[Host]) -> list[Host]:
    """The workers whose log shows them starting the job's task."""
    return [w for w in workers if re.search(rf"→ ragd:sync:{job_id}:", w.text())]


async def test_two_apis_two_workers_no_shared_disk(
    cluster: tuple[FakeCloudflare, list[Host], list[Host]],
) -> None:
    fake, (api1, api2), workers = cluster
    async with httpx.AsyncClient(timeout=60, headers=AUTH) as http:
        # An R2 instance created through API 1, paused (no scheduled syncs: only ours runs),
        # with the similarity cache on.
        body = {"id": "gear", "source": DOCS_BUCKET, "type": "r2", "paused": True,
                "cache": True, "chunk_size": 64}  # fmt: skip
        ok(await http.post(f"{api1.url}{API}", json=body))
        job = ok(await http.post(f"{api1.url}{API}/gear/jobs"))

        # One worker takes it; once some items are done that worker is killed.
        [first] = await until(lambda: asyncio.sleep(0, runner_of(job["id"], workers)), 60,
                              "a worker starts the sync")  # fmt: skip

        async def some_done() -> bool:
            items = ok(await http.get(f"{api2.url}{API}/gear/items", params={"per_page": 50}))
            return sum(i["status"] == "completed" for i in items) >= 2

        await until(some_done, 120, "the sync has indexed a few items")
        state = ok(await http.get(f"{api2.url}{API}/gear/jobs/{job['id']}"))
        assert state["ended_at"] is None, state  # killed mid-sync
        first.kill()
        [other] = [w for w in workers if w is not first]

        async def ended() -> dict[str, Any] | None:
            now = ok(await http.get(f"{api1.url}{API}/gear/jobs/{job['id']}"))
            return now if now["ended_at"] else None

        done = await until(ended, 240, "the other worker finishes the sync")
        assert done["status"] == "completed", done
        assert runner_of(job["id"], [other]), other.text()[-2000:]
        items = ok(await http.get(f"{api2.url}{API}/gear/items", params={"per_page": 50}))
        assert len(items) == 40 and {i["status"] for i in items} == {"completed"}, items

        # The same hybrid query to both APIs: the same chunks and scores.
        query = {"query": "lantern storage", "ai_search_options": {
            "retrieval": {"retrieval_type": "hybrid", "max_num_results": 8}}}  # fmt: skip
        results = [
            ok(await http.post(f"{api.url}{API}/gear/search", json=query)) for api in (api1, api2)
        ]
        one, two = ([(c["id"], c["score"], c["text"]) for c in r["chunks"]] for r in results)
        assert one == two and len(one) == 8
        assert "lantern" in results[0]["chunks"][0]["item"]["key"]

        # An upload through API 2 into an instance without a source is found through API 1.
        ok(await http.post(f"{api2.url}{API}", json={"id": "notes"}))
        form = {"wait_for_completion": "true"}
        upload = ok(await http.post(
            f"{api2.url}{API}/notes/items", data=form,
            files={"file": ("harbour.md", b"The harbour master keeps the tide tables.")},
        ))  # fmt: skip
        assert upload["status"] == "completed", upload
        found = ok(await http.post(f"{api1.url}{API}/notes/search", json={"query": "tide tables"}))
        assert [c["item"]["key"] for c in found["chunks"]] == ["harbour.md"]

        # An answer first given by API 1 is a cache hit on API 2.
        asked = {"messages": [{"role": "user", "content": "kayak care and storage"}]}
        first_answer = await http.post(f"{api1.url}{API}/gear/chat/completions", json=asked)
        again = await http.post(f"{api2.url}{API}/gear/chat/completions", json=asked)
        assert first_answer.status_code == again.status_code == 200, again.text
        assert first_answer.headers["cf-aig-cache-status"] == "MISS"
        assert "kayak" in first_answer.json()["chunks"][0]["item"]["key"]
        assert again.headers["cf-aig-cache-status"] == "HIT"
        assert again.json()["choices"] == first_answer.json()["choices"]

        # A token made through API 1 works on API 2.
        made = ok(await http.post(f"{api1.url}/accounts/any/tokens", json={"name": "ci"}))
        other_token = {"Authorization": f"Bearer {made['value']}"}
        listed = await http.get(f"{api2.url}{API}", headers=other_token)
        assert listed.status_code == 200, listed.text

    # Nothing was written to any host's data dir.
    for host in (api1, api2, *workers):
        assert files_in(Path(host.env["RAGD_DATA_DIR"])) == [], host.name
    assert fake.calls("vectorize", "/upsert")
