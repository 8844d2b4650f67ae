"""Cloudflare's own Python SDK (`cloudflare==5.9.0`) against `ragd up`, started as the README
says, with nothing changed but `base_url`. Every response must validate against the SDK's
types (`model_validate` on the raw JSON, stricter than the SDK's lenient parsing)."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cloudflare import APIStatusError, AuthenticationError, BadRequestError, Cloudflare
from cloudflare import BaseModel as SDKModel
from cloudflare.types.aisearch import (
    InstanceCreateResponse,
    InstanceListResponse,
    InstanceReadResponse,
    InstanceSearchResponse,
    InstanceStatsResponse,
    InstanceUpdateResponse,
)
from cloudflare.types.aisearch.instance_chat_completions_response import (
    InstanceChatCompletionsResponse,
)
from cloudflare.types.aisearch.instances import JobGetResponse, JobListResponse
from cloudflare.types.aisearch.instances.job_logs_response import JobLogsResponseItem
from cloudflare.types.aisearch.namespaces.instances import ItemGetResponse, ItemListResponse
from cloudflare.types.aisearch.namespaces.instances.item_chunks_response import (
    ItemChunksResponseItem,
)

from tests.test_up import search as wait_for_samples
from tests.test_up import service  # noqa: F401  (the `ragd up` fixture)

ACCOUNT = "0123456789abcdef"  # any value: accepted and ignored
GREEN_TEA = "How hot should the water be for green tea?"
M = TypeVar("M", bound=SDKModel)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def client(service: tuple[str, str]) -> Iterator[Cloudflare]:  # noqa: F811
    base, token = service
    wait_for_samples(base, token, "green tea")
    with Cloudflare(api_token=token, base_url=base, max_retries=0, timeout=180) as cf:
        yield cf


def strict(model: type[M], data: Any) -> M:
    """Validate like pydantic does, not like the SDK's lenient `construct`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.model_validate(data)


def raw_result(response: Any) -> Any:
    body = json.loads(response.http_response.text)
    assert body["success"] is True and body["errors"] == [], body
    return body["result"]


def test_list_and_read(client: Cloudflare) -> None:
    page = client.aisearch.instances.list(account_id=ACCOUNT)
    assert "default" in [i.id for i in page.result]
    assert page.result_info is not None and page.result_info.page == 1
    raw = client.aisearch.instances.with_raw_response.list(account_id=ACCOUNT)
    for item in raw_result(raw):
        strict(InstanceListResponse, item)
    read = client.aisearch.instances.read("default", account_id=ACCOUNT)
    assert isinstance(read, InstanceReadResponse) and read.id == "default"
    raw = client.aisearch.instances.with_raw_response.read("default", account_id=ACCOUNT)
    strict(InstanceReadResponse, raw_result(raw))
    assert read.chunk_size == 256 and read.index_method is not None


def test_search_ranks_the_right_document_first(client: Cloudflare) -> None:
    found = client.aisearch.instances.search(
        "default",
        account_id=ACCOUNT,
        query=GREEN_TEA,
        aisearch_options={"retrieval": {"retrieval_type": "hybrid", "max_num_results": 3}},
    )
    assert isinstance(found, InstanceSearchResponse)
    assert found.search_query == GREEN_TEA and 1 <= len(found.chunks) <= 3
    first = found.chunks[0]
    assert first.item is not None and first.item.key == "green-tea.txt"
    details = first.scoring_details
    assert details is not None and details.fusion_method == "max"
    assert details.vector_score is not None and details.vector_rank == 1
    raw = client.aisearch.instances.with_raw_response.search(
        "default", account_id=ACCOUNT, messages=[{"role": "user", "content": GREEN_TEA}]
    )
    strict(InstanceSearchResponse, raw_result(raw))
    vector_only = client.aisearch.instances.search(
        "default",
        account_id=ACCOUNT,
        query=GREEN_TEA,
        aisearch_options={"retrieval": {"retrieval_type": "vector", "filters": {"folder": ""}}},
    )
    assert vector_only.chunks[0].scoring_details.keyword_rank is None  # type: ignore[union-attr]


def test_chat_completions(client: Cloudflare) -> None:
    answer = client.aisearch.instances.chat_completions(
        "default", account_id=ACCOUNT, messages=[{"role": "user", "content": GREEN_TEA}]
    )
    assert isinstance(answer, InstanceChatCompletionsResponse)
    strict(InstanceChatCompletionsResponse, answer.model_dump(mode="json"))
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].message.content.strip()
    assert answer.choices[0].message.role == "assistant"
    assert answer.chunks[0].item is not None and answer.chunks[0].item.key == "green-tea.txt"


def test_chat_completions_streamed(client: Cloudflare) -> None:
    events: list[str] = []
    with client.aisearch.instances.with_streaming_response.chat_completions(
        "default",
        account_id=ACCOUNT,
        messages=[{"role": "user", "content": GREEN_TEA}],
        stream=True,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    assert lines[0] == "event: chunks"  # the sources come first, as a named event
    events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    sources = json.loads(events[0])
    assert sources[0]["item"]["key"] == "green-tea.txt"
    deltas = [json.loads(e) for e in events[1:-1]]
    assert len(deltas) >= 3 and all(d["object"] == "chat.completion.chunk" for d in deltas)
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in deltas)
    assert text.strip() and deltas[-1]["choices"][0]["finish_reason"] == "stop"


def wait_for_job(client: Cloudflare, instance: str, job_id: str) -> JobGetResponse:
    for _ in range(600):
        job = client.aisearch.instances.jobs.get(job_id, account_id=ACCOUNT, id=instance)
        if job.ended_at:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never ended")


def start_job(client: Cloudflare, instance: str) -> str:
    """The embedded scheduler syncs a new instance on its next tick: retry while it runs."""
    for _ in range(100):
        try:
            job = client.aisearch.instances.jobs.create(
                instance, account_id=ACCOUNT, description="from the SDK test"
            )
            return job.id
        except APIStatusError as exc:
            assert exc.status_code == 409, exc
            time.sleep(0.3)
    raise AssertionError("the instance never stopped syncing")


def test_instance_lifecycle_jobs_items_stats(client: Cloudflare, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "guides/kayak.md").write_text(
        "# Kayak care\n\nRinse the kayak with fresh water after paddling in the sea, and store "
        "it upside down out of the sun so the hull does not warp."
    )
    (docs / "piano.txt").write_text(
        "Tune a piano twice a year; humidity changes pull the strings out of pitch."
    )
    instances = client.aisearch.instances
    created = instances.create(
        account_id=ACCOUNT, id="sdk-docs", source=str(docs), chunk_size=128, sync_interval=86400
    )
    assert isinstance(created, InstanceCreateResponse) and created.chunk_size == 128
    strict(InstanceCreateResponse, created.model_dump(mode="json"))
    updated = instances.update("sdk-docs", account_id=ACCOUNT, max_num_results=5)
    assert isinstance(updated, InstanceUpdateResponse) and updated.max_num_results == 5
    assert instances.read("sdk-docs", account_id=ACCOUNT).max_num_results == 5

    job_id = start_job(client, "sdk-docs")
    job = wait_for_job(client, "sdk-docs", job_id)
    strict(JobGetResponse, job.model_dump(mode="json"))
    assert job.description == "from the SDK test" and job.source == "user"
    listed = instances.jobs.list("sdk-docs", account_id=ACCOUNT)
    assert job_id in [j.id for j in listed.result]
    for j in raw_result(instances.jobs.with_raw_response.list("sdk-docs", account_id=ACCOUNT)):
        strict(JobListResponse, j)
    logs = instances.jobs.logs(job_id, account_id=ACCOUNT, id="sdk-docs")
    assert logs and all(isinstance(line, JobLogsResponseItem) for line in logs)
    assert any("listed" in line.message for line in logs)

    items = client.aisearch.namespaces.instances.items
    page = items.list("sdk-docs", account_id=ACCOUNT, name="default")
    by_key = {i.key: i for i in page.result}
    assert set(by_key) == {"guides/kayak.md", "piano.txt"}
    assert {i.status for i in page.result} == {"completed"}
    for i in raw_result(
        items.with_raw_response.list("sdk-docs", account_id=ACCOUNT, name="default")
    ):
        strict(ItemListResponse, i)
    kayak = items.get(
        by_key["guides/kayak.md"].id, account_id=ACCOUNT, name="default", id="sdk-docs"
    )
    strict(ItemGetResponse, kayak.model_dump(mode="json"))
    assert kayak.chunks_count and kayak.chunks_count >= 1
    chunks = items.chunks(kayak.id, account_id=ACCOUNT, name="default", id="sdk-docs")
    assert chunks and isinstance(chunks[0], ItemChunksResponseItem)
    assert "Rinse the kayak" in chunks[0].text and chunks[0].item.key == "guides/kayak.md"

    found = instances.search("sdk-docs", account_id=ACCOUNT, query="how should I store a kayak")
    assert found.chunks[0].item.key == "guides/kayak.md"  # type: ignore[union-attr]
    stats = instances.stats("sdk-docs", account_id=ACCOUNT)
    assert isinstance(stats, InstanceStatsResponse)
    assert stats.completed == 2 and stats.error == 0 and stats.last_activity is not None
    assert stats.engine and stats.engine.vectorize and stats.engine.vectorize.vectors_count >= 2

    deleted = items.delete(kayak.id, account_id=ACCOUNT, name="default", id="sdk-docs")
    assert deleted.key == "guides/kayak.md"
    left = items.list("sdk-docs", account_id=ACCOUNT, name="default").result
    assert [i.key for i in left] == ["piano.txt"]
    found = instances.search("sdk-docs", account_id=ACCOUNT, query="how should I store a kayak")
    assert all(c.item.key != "guides/kayak.md" for c in found.chunks)  # type: ignore[union-attr]

    gone = instances.delete("sdk-docs", account_id=ACCOUNT)
    assert gone.id == "sdk-docs"
    with pytest.raises(APIStatusError) as missing:
        instances.read("sdk-docs", account_id=ACCOUNT)
    assert missing.value.status_code == 404


def test_errors_come_back_as_sdk_exceptions(client: Cloudflare, service: tuple[str, str]) -> None:  # noqa: F811
    with pytest.raises(BadRequestError) as bad:
        client.aisearch.instances.search(
            "default",
            account_id=ACCOUNT,
            query="x",
            aisearch_options={"retrieval": {"max_num_results": 1000}},
        )
    assert "max_num_results" in str(bad.value)
    intruder = Cloudflare(api_token="wrong", base_url=service[0], max_retries=0)
    with intruder, pytest.raises(AuthenticationError):
        intruder.aisearch.instances.list(account_id=ACCOUNT)
