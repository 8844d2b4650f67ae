"""The rerank stage and the runtime's choice of reranker."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from rag_service.config import Settings
from rag_service.errors import BackendError, InvalidRequest
from rag_service.instances import InstanceConfig
from rag_service.providers.cloudflare.workers_ai import (
    WORKERS_AI_RERANKING_MODEL,
    WorkersAIReranker,
)
from rag_service.query.options import QueryOptions
from rag_service.registry import Providers
from rag_service.retrieve.rerank import rerank
from rag_service.retrieve.search import ScoredChunk
from rag_service.runtime import Runtime
from tests.fakes import EchoGenerator, HashingEmbedder


class WordReranker:
    """Scores 0.9 a text holding its favourite word, 0.2 any other; records each call."""

    def __init__(self, favourite: str, model_id: str = "test/word-reranker") -> None:
        self.favourite, self.model_id = favourite, model_id
        self.calls: list[tuple[str, list[str]]] = []

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls.append((query, list(texts)))
        return [0.9 if self.favourite in t.lower() else 0.2 for t in texts]


def chunk(id_: str, text: str, score: float) -> ScoredChunk:
    return ScoredChunk(id=id_, text=text, score=score, metadata={"text": text}, vector_score=score)


async def test_rerank_orders_by_the_reranker_and_applies_its_threshold() -> None:
    chunks = [chunk("a:0", "apples", 0.9), chunk("b:0", "bread", 0.8), chunk("c:0", "cheese", 0.7)]
    reranker = WordReranker("bread")
    out = await rerank(reranker, "what bread", chunks)
    assert [c.id for c in out] == ["b:0", "a:0", "c:0"]  # ties keep retrieval order
    assert [c.reranking_score for c in out] == [0.9, 0.2, 0.2]
    assert [c.score for c in out] == [0.9, 0.2, 0.2]
    assert out[0].vector_score == 0.8  # the retrieval details stay
    assert reranker.calls == [("what bread", ["apples", "bread", "cheese"])]
    strict = await rerank(WordReranker("bread"), "q", chunks, match_threshold=0.5)
    assert [c.id for c in strict] == ["b:0"]
    assert await rerank(reranker, "q", []) == [] and len(reranker.calls) == 1


async def test_a_reranker_returning_the_wrong_count_is_a_backend_error() -> None:
    class Short(WordReranker):
        async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
            return [0.5]

    with pytest.raises(BackendError, match="1 scores for 2 texts"):
        await rerank(Short("x"), "q", [chunk("a:0", "a", 1.0), chunk("b:0", "b", 1.0)])


async def test_runtime_picks_workers_ai_or_a_local_cross_encoder(tmp_path: Path) -> None:
    loaded: list[str] = []

    def factory(model: str) -> WordReranker:
        loaded.append(model)
        return WordReranker("x", model)

    settings = Settings(
        data_dir=tmp_path, reranking_model="my/cross-encoder", allowed_models="/m,other/model"
    )
    async with Runtime(settings, Providers(settings, reranker_factory=factory)) as rt:
        local = InstanceConfig()
        assert (await rt.providers.reranker(local)).model_id == "my/cross-encoder"
        assert (
            await rt.providers.reranker(local.model_copy(update={"reranking_model": "/m"}))
        ).model_id
        assert (await rt.providers.reranker(local, "other/model")).model_id == "other/model"
        await rt.providers.reranker(local)  # loaded once per model
        assert loaded == ["my/cross-encoder", "/m", "other/model"]
        with pytest.raises(InvalidRequest, match="RAGD_CLOUDFLARE_ACCOUNT_ID"):
            await rt.providers.reranker(local, WORKERS_AI_RERANKING_MODEL)
    default = Settings(data_dir=tmp_path)
    async with Runtime(default, Providers(default, reranker_factory=factory)) as rt:
        assert (await rt.providers.reranker(InstanceConfig())).model_id == "BAAI/bge-reranker-base"
    cloud = Settings(
        data_dir=tmp_path,
        cloudflare_account_id="acc",
        cloudflare_api_token="t",
        backend="local",
        allowed_models="@cf/baai/other-reranker",
    )
    async with Runtime(cloud, Providers(cloud, reranker_factory=factory)) as rt:
        cf = await rt.providers.reranker(InstanceConfig(backend="cloudflare"))
        assert isinstance(cf, WorkersAIReranker) and cf.model_id == WORKERS_AI_RERANKING_MODEL
        named = await rt.providers.reranker(InstanceConfig(), "@cf/baai/other-reranker")
        assert isinstance(named, WorkersAIReranker) and named.model_id.endswith("other-reranker")


async def test_search_reranks_only_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("bread bread bread flour")
    (src / "b.md").write_text("bread and cheese on a plate")
    embedder, reranker = HashingEmbedder(), WordReranker("cheese")
    settings = Settings(data_dir=tmp_path / "data")
    providers = Providers(
        settings,
        embedder_factory=lambda m, p: embedder,
        generator_factory=lambda cfg: EchoGenerator(),
        reranker_factory=lambda model: reranker,
    )
    rt = Runtime(settings, providers)
    async with rt:
        await rt.instances.ensure_default(str(src))
        await rt.sync("default")
        opts = QueryOptions(retrieval_type="keyword")
        plain = (await rt.pipeline.search("default", "bread", opts)).chunks
        assert [c.key for c in plain] == ["a.md", "b.md"] and reranker.calls == []
        reranked = dataclasses.replace(opts, reranking=True, reranking_threshold=0.5)
        ranked = (await rt.pipeline.search("default", "bread", reranked)).chunks
        assert [c.key for c in ranked] == ["b.md"] and ranked[0].reranking_score == 0.9
        assert reranker.calls[0][0] == "bread"
