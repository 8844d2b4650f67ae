"""Cloudflare's own SDK (cloudflare==5.9.0) as the oracle: for every operation ragd uses, the
SDK and our client send it to the fake, and method, path, query and body must agree. The SDK
also parses the fake's answers into its typed models, which checks the fake's shapes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from cloudflare import AsyncCloudflare

from rag_service.providers.cloudflare import (
    CloudflareAPI,
    VectorizeClient,
    WorkersAIEmbedder,
    WorkersAIGenerator,
    WorkersAIReranker,
)
from rag_service.providers.cloudflare.vectorize import ndjson_batches
from tests.cloudflare.fake_api import FakeCloudflare, Recorded

EMBED = "@cf/baai/bge-base-en-v1.5"
LLM = "@cf/meta/llama-3.1-8b-instruct"
RERANK = "@cf/baai/bge-reranker-base"
NAME = "contract"


@pytest.fixture
async def sdk(fake: FakeCloudflare) -> Any:
    client = AsyncCloudflare(api_token=fake.token, base_url=fake.base_url, max_retries=0)
    yield client
    await client.close()


async def both(
    fake: FakeCloudflare,
    ours: Callable[[], Awaitable[Any]],
    theirs: Callable[[], Awaitable[Any]],
    *,
    ndjson: bool = False,
) -> tuple[Any, Any]:
    """Run our call, then the SDK's; assert they sent the same request; return both results."""
    sent: list[Recorded] = []
    results = []
    for call in (ours, theirs):
        start = len(fake.requests)
        results.append(await call())
        (request,) = fake.requests[start:]
        assert request.status == 200, request.path
        sent.append(request)
    mine, sdk = sent
    assert (mine.method, mine.path, mine.query) == (sdk.method, sdk.path, sdk.query)
    if ndjson:
        assert mine.headers["content-type"] == "application/x-ndjson"
        assert sdk.headers["content-type"] == "application/json"  # the SDK's label for it
        assert mine.ndjson() == sdk.ndjson()
    elif mine.body or sdk.body:
        assert mine.json() == sdk.json()
    return results[0], results[1]


async def test_workers_ai_run(fake: FakeCloudflare, api: CloudflareAPI, sdk: Any) -> None:
    acc = fake.account
    texts = ["green tea", "black tea"]
    mine, theirs = await both(
        fake,
        lambda: WorkersAIEmbedder(api, EMBED).embed_documents(texts),
        lambda: sdk.ai.run(EMBED, account_id=acc, text=texts, extra_body={"pooling": "cls"}),
    )
    assert theirs["shape"] == [2, 768]
    np.testing.assert_allclose(mine, theirs["data"], atol=1e-6)

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]

    async def generate() -> str:
        pieces = WorkersAIGenerator(api, LLM).stream(messages, max_tokens=16, temperature=0.0)
        return "".join([p async for p in pieces])

    async def sdk_generate() -> str:
        raw = await sdk.ai.with_raw_response.run(
            LLM, account_id=acc, messages=messages, max_tokens=16, temperature=0.0, stream=True
        )
        return str(await raw.text())

    answer, stream = await both(fake, generate, sdk_generate)
    assert answer.strip() and "data: [DONE]" in stream

    contexts = ["tea water", "bicycle"]
    scores, theirs = await both(
        fake,
        lambda: WorkersAIReranker(api, RERANK).rerank("tea water", contexts),
        lambda: sdk.ai.run(
            RERANK,
            account_id=acc,
            top_k=2,
            extra_body={"query": "tea water", "contexts": [{"text": t} for t in contexts]},
        ),
    )
    assert {r["id"]: r["score"] for r in theirs["response"]} == dict(enumerate(scores))


@pytest.mark.filterwarnings("ignore:Passing raw bytes as `body`:DeprecationWarning")
async def test_vectorize_v2(fake: FakeCloudflare, api: CloudflareAPI, sdk: Any) -> None:
    acc, ours = fake.account, VectorizeClient(api, NAME)
    indexes = sdk.vectorize.indexes

    async def sdk_create() -> Any:
        fake.vectorize.indexes.pop(NAME)  # so the second create is not a duplicate
        config = {"dimensions": 4, "metric": "cosine"}
        return await indexes.create(account_id=acc, config=config, name=NAME, description="d")

    _, created = await both(fake, lambda: ours.create(4, "cosine", "d"), sdk_create)
    assert created.config.dimensions == 4 and created.name == NAME
    mine, theirs = await both(fake, ours.get, lambda: indexes.get(NAME, account_id=acc))
    assert theirs.description == mine["description"] == "d"

    async def sdk_metadata_index() -> Any:
        fake.vectorize.indexes[NAME].metadata_indexes.pop("folder")
        return await indexes.metadata_index.create(
            NAME, account_id=acc, index_type="string", property_name="folder"
        )

    mine, theirs = await both(
        fake, lambda: ours.create_metadata_index("folder", "string"), sdk_metadata_index
    )
    assert theirs.mutation_id and mine != theirs.mutation_id
    _, listed = await both(
        fake, ours.list_metadata_indexes, lambda: indexes.metadata_index.list(NAME, account_id=acc)
    )
    assert [(m.property_name, m.index_type) for m in listed.metadata_indexes] == [
        ("folder", "string")
    ]

    vectors = [
        {"id": f"v{i}", "values": [1.0, float(i), 0.0, 1.0], "metadata": {"folder": f"{i % 2}/"}}
        for i in range(6)
    ]
    (body,) = ndjson_batches(vectors)
    _, upserted = await both(
        fake,
        lambda: ours.upsert(vectors),
        lambda: indexes.upsert(NAME, account_id=acc, body=body),
        ndjson=True,
    )
    assert upserted.mutation_id
    mine, info = await both(fake, ours.info, lambda: indexes.info(NAME, account_id=acc))
    assert info.vector_count == mine["vectorCount"] == 6
    assert info.processed_up_to_mutation == upserted.mutation_id

    query = {"filter": {"folder": {"$eq": "1/"}}, "return_metadata": "all", "return_values": False}
    mine, found = await both(
        fake,
        lambda: ours.query([1.0, 3.0, 0.0, 1.0], 2, **query),
        lambda: indexes.query(NAME, account_id=acc, vector=[1.0, 3.0, 0.0, 1.0], top_k=2, **query),
    )
    assert [m.id for m in found.matches] == [m["id"] for m in mine] == ["v3", "v5"]
    mine, got = await both(
        fake,
        lambda: ours.get_by_ids(["v1", "v2"]),
        lambda: indexes.get_by_ids(NAME, account_id=acc, ids=["v1", "v2"]),
    )
    assert got == mine
    _, page = await both(
        fake,
        lambda: ours.list_vectors(count=4),
        lambda: indexes.list_vectors(NAME, account_id=acc, count=4),
    )
    assert page.count == 4 and page.is_truncated and page.total_count == 6
    _, deleted = await both(
        fake,
        lambda: ours.delete_by_ids(["v0"]),
        lambda: indexes.delete_by_ids(NAME, account_id=acc, ids=["v0"]),
    )
    assert deleted.mutation_id
