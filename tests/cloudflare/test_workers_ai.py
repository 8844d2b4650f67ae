"""Workers AI embedder, generator and reranker against the fake over real HTTP."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rag_service.config import BGE_QUERY_INSTRUCTION
from rag_service.errors import BackendError
from rag_service.providers.cloudflare import (
    CloudflareAPI,
    CloudflareNotFound,
    GatewayOptions,
    UsageMeter,
    WorkersAIEmbedder,
    WorkersAIGenerator,
    WorkersAIReranker,
)
from rag_service.providers.local_models import minilm_path
from rag_service.providers.protocols import Embedder, Generator, Reranker, Usage
from tests.cloudflare.conftest import make_api
from tests.cloudflare.fake_api import FakeCloudflare, hash_embedding

BASE = "@cf/baai/bge-base-en-v1.5"


async def test_embeddings_always_cls_in_batches_of_100(
    fake: FakeCloudflare, api: CloudflareAPI
) -> None:
    embedder = WorkersAIEmbedder(api)
    assert isinstance(embedder, Embedder)
    texts = [f"document number {i} about tea" for i in range(250)]
    vectors = await embedder.embed_documents(texts)
    calls = fake.calls("embeddings")
    assert [len(c.json()["text"]) for c in calls] == [100, 100, 50]
    assert all(c.json()["pooling"] == "cls" for c in calls)
    assert all(c.path == f"/accounts/{fake.account}/ai/run/{BASE}" for c in calls)
    assert vectors.shape == (250, 768) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[7], hash_embedding(texts[7], 768, "cls"), atol=1e-6)


async def test_query_gets_bge_instruction(fake: FakeCloudflare, api: CloudflareAPI) -> None:
    await WorkersAIEmbedder(api).embed_query("green tea temperature")
    assert fake.calls("embeddings")[0].json()["text"] == [
        BGE_QUERY_INSTRUCTION + "green tea temperature"
    ]
    await WorkersAIEmbedder(api, "@cf/baai/bge-m3").embed_query("plain")
    assert fake.calls("embeddings")[1].json()["text"] == ["plain"]


async def test_dimensions_are_checked(api: CloudflareAPI) -> None:
    wrong = WorkersAIEmbedder(api, BASE, dimensions=384)
    with pytest.raises(BackendError, match="768-dimensional vectors; expected 384"):
        await wrong.embed_documents(["x"])
    with pytest.raises(BackendError, match="unknown dimensions"):
        WorkersAIEmbedder(api, "@cf/someone/else")


async def test_unknown_model_is_named(api: CloudflareAPI) -> None:
    embedder = WorkersAIEmbedder(api, "@cf/baai/bge-nope", dimensions=768)
    with pytest.raises(CloudflareNotFound, match=r"unknown Workers AI model.*No such model"):
        await embedder.embed_documents(["x"])


def test_token_count_is_bert_wordpiece(api: CloudflareAPI) -> None:
    from tokenizers import BertWordPieceTokenizer

    reference = BertWordPieceTokenizer(str(minilm_path() / "vocab.txt"), lowercase=True)
    embedder = WorkersAIEmbedder(api)
    text = "Unbelievably, the tokenizer splits words like Cloudflare into pieces. " * 40
    expected = reference.encode(text, add_special_tokens=False).ids
    assert embedder.count_tokens(text) == len(expected) == 720
    assert embedder.count_tokens(text) > 512 and embedder.max_tokens == 512


async def test_generation_streams_pieces_as_they_arrive(
    fake: FakeCloudflare, api: CloudflareAPI
) -> None:
    fake.stream_delay = 0.05
    generator = WorkersAIGenerator(api, "@cf/meta/llama-3.3-70b-instruct-fp8-fast")
    assert isinstance(generator, Generator) and generator.context_window == 24000
    messages = [
        {"role": "system", "content": "Use the documents."},
        {"role": "user", "content": "one two three four five six seven eight nine ten"},
    ]
    usage = Usage()
    started = time.monotonic()
    arrivals, pieces = [], []
    async for piece in generator.stream(messages, max_tokens=12, usage=usage):
        arrivals.append(time.monotonic() - started)
        pieces.append(piece)
    total = time.monotonic() - started
    assert len(pieces) == 12 and pieces[0] == "Answer: "
    assert arrivals[0] < total - 0.3  # the first piece came long before the stream ended
    body = fake.calls("text_generation")[0].json()
    assert body["stream"] is True and body["max_tokens"] == 12
    assert body["messages"] == messages
    assert (usage.prompt_tokens, usage.completion_tokens) == (13, 12)  # from the last event


async def test_generation_counts_tokens_conservatively(api: CloudflareAPI) -> None:
    generator = WorkersAIGenerator(api, "@cf/some/new-model")
    assert generator.context_window == 4096
    text = "The quick brown fox jumps over the lazy dog. " * 20  # ~200 Llama tokens
    assert generator.count_tokens([{"role": "user", "content": text}]) >= 300


async def test_reranker_scores_in_input_order(fake: FakeCloudflare, api: CloudflareAPI) -> None:
    reranker = WorkersAIReranker(api)
    assert isinstance(reranker, Reranker)
    texts = ["nothing relevant", "green tea water", "green tea water temperature"]
    scores = await reranker.rerank("green tea water temperature", texts)
    assert scores == pytest.approx([0.0, 0.75, 1.0])
    body = fake.calls("other")[0].json()
    assert body == {
        "query": "green tea water temperature",
        "contexts": [{"text": t} for t in texts],
        "top_k": 3,
    }


async def test_ai_gateway_routing_and_cache_headers(fake: FakeCloudflare) -> None:
    api = make_api(
        fake,
        gateway_id="my-gateway",
        gateway_base=f"{fake.base_url}/v1",
        gateway=GatewayOptions(cache_ttl=3600, skip_cache=True),
    )
    await WorkersAIEmbedder(api).embed_documents(["via the gateway"])
    call = fake.calls("embeddings")[0]
    assert call.path == f"/v1/{fake.account}/my-gateway/workers-ai/{BASE}"
    assert call.headers["cf-aig-cache-ttl"] == "3600"
    assert call.headers["cf-aig-skip-cache"] == "true"
    await api.aclose()


async def test_usage_meter_counts_tokens_and_cost(api: CloudflareAPI) -> None:
    meter = UsageMeter()
    generator = WorkersAIGenerator(api)
    with meter.attach():
        await WorkersAIEmbedder(api).embed_documents(["green tea", "black tea"])
        async for _ in generator.stream([{"role": "user", "content": "hi"}], max_tokens=5):
            pass
    await WorkersAIEmbedder(api).embed_documents(["not counted"])  # outside the meter
    snap = meter.snapshot()
    assert snap["calls"] == 2
    assert snap["models"][BASE] == {
        "calls": 1,
        "input_tokens": 8,  # 2 + 2 words, [CLS]/[SEP] each
        "output_tokens": 0,
        "neurons": pytest.approx(8 * 0.067 / 1e6 / 0.011 * 1000, abs=1e-3),
        "usd": pytest.approx(8 * 0.067 / 1e6),
        "unpriced_calls": 0,
    }
    llama = snap["models"]["@cf/meta/llama-3.1-8b-instruct"]
    assert (llama["input_tokens"], llama["output_tokens"]) == (1, 2)
    assert snap["usd"] == pytest.approx(8 * 0.067 / 1e6 + (0.282 + 2 * 0.827) / 1e6)
