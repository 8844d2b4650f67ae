"""LocalEmbedder with the shipped all-MiniLM-L6-v2: pooling, normalisation, batching, queries."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from rag_service.config import LOCAL_EMBEDDING_MODEL, Settings
from rag_service.providers import local_embedder as local_embedder_mod
from rag_service.providers import local_models
from rag_service.providers.local_embedder import (
    LocalEmbedder,
    default_pooling,
    default_query_instruction,
)
from rag_service.providers.local_models import (
    embedding_lanes,
    minilm_path,
    resolve_embedding_model,
    torch_threads,
)
from rag_service.providers.protocols import Embedder
from rag_service.registry import Providers

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture(scope="module")
def mean() -> LocalEmbedder:
    return LocalEmbedder(LOCAL_EMBEDDING_MODEL, pooling="mean")


@pytest.fixture(scope="module")
def cls() -> LocalEmbedder:
    return LocalEmbedder(LOCAL_EMBEDDING_MODEL, pooling="cls")


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    """Last hidden state of TEXT computed with transformers directly."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    with torch.inference_mode():
        hidden: torch.Tensor = model(**tokenizer([TEXT], return_tensors="pt")).last_hidden_state
    return hidden[0]


def test_attributes_and_defaults(mean: LocalEmbedder) -> None:
    assert isinstance(mean, Embedder)
    assert resolve_embedding_model(LOCAL_EMBEDDING_MODEL) == str(minilm_path())
    assert resolve_embedding_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert mean.model_id == LOCAL_EMBEDDING_MODEL  # the logical name, not the folder
    assert (mean.dimensions, mean.max_tokens, mean.query_instruction) == (384, 256, "")
    assert default_pooling("BAAI/bge-base-en-v1.5") == "cls"
    assert default_pooling(LOCAL_EMBEDDING_MODEL) == "mean"
    assert default_query_instruction("BAAI/bge-small-en-v1.5").startswith("Represent this")
    assert default_query_instruction("BAAI/bge-m3") == ""
    assert default_query_instruction(LOCAL_EMBEDDING_MODEL) == ""


def test_count_tokens(mean: LocalEmbedder) -> None:
    assert mean.count_tokens("hello world") == 2  # no [CLS]/[SEP]
    assert mean.count_tokens("word " * 1000) == 1000  # no truncation, no padding
    assert mean.count_tokens(TEXT) == len(mean.tokenizer.tokenize(TEXT))


async def test_cls_and_mean_pooling_match_a_direct_computation(
    mean: LocalEmbedder, cls: LocalEmbedder, reference: torch.Tensor
) -> None:
    got_cls = (await cls.embed_documents([TEXT]))[0]
    got_mean = (await mean.embed_documents([TEXT]))[0]
    want_cls = torch.nn.functional.normalize(reference[0], dim=0).numpy()
    want_mean = torch.nn.functional.normalize(reference.mean(dim=0), dim=0).numpy()
    np.testing.assert_allclose(got_cls, want_cls, atol=1e-5)
    np.testing.assert_allclose(got_mean, want_mean, atol=1e-5)
    assert float(got_cls @ got_mean) < 0.99


async def test_mean_pooling_matches_sentence_transformers(mean: LocalEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [TEXT, "short", "A longer passage about baking sourdough bread at home. " * 8]
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    want = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(await mean.embed_documents(texts), want, atol=1e-4)


async def test_unit_norm_and_batching_does_not_change_results(mean: LocalEmbedder) -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    texts = [" ".join(words[: 1 + i % 9]) * (1 + i % 7) for i in range(50)]
    together = await mean.embed_documents(texts)
    assert together.shape == (50, 384) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.stack([(await mean.embed_documents([t]))[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    empty = await mean.embed_documents([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


async def test_lanes_and_threads_give_the_same_vectors(mean: LocalEmbedder) -> None:
    """Batches in parallel single-threaded lanes, or in one team of threads, or one by one:
    the same vectors, each in its input row."""
    texts = [f"{TEXT} " * (1 + i % 5) + f"number {i}" for i in range(70)]
    runs = []
    for lanes, threads in ((1, 1), (3, 1), (1, 2)):
        mean.lanes, mean.threads = lanes, threads
        runs.append(await mean.embed_documents(texts))
    mean.lanes, mean.threads = embedding_lanes(), torch_threads()
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-5)
    alone = (await mean.embed_documents([texts[41]]))[0]
    np.testing.assert_allclose(runs[1][41], alone, atol=1e-5)


async def test_truncation_at_max_tokens(mean: LocalEmbedder) -> None:
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "dog", "ran"] * 200
    long, cut = " ".join(words), " ".join(words[:254])
    assert mean.count_tokens(long) == len(words)  # one token each
    a, b = await mean.embed_documents([long, cut])  # 254 + [CLS] + [SEP] = 256
    np.testing.assert_allclose(a, b, atol=1e-5)


async def test_query_instruction_is_prepended(mean: LocalEmbedder) -> None:
    instruction = "Represent this sentence for searching relevant passages: "
    bge_like = LocalEmbedder(LOCAL_EMBEDDING_MODEL, query_instruction=instruction)
    query = await bge_like.embed_query("x")
    assert query.shape == (384,)
    np.testing.assert_allclose(query, (await mean.embed_documents([instruction + "x"]))[0])
    assert not np.allclose(await mean.embed_query("x"), query)


async def test_semantic_sanity(mean: LocalEmbedder) -> None:
    query = await mean.embed_query("How do I bake bread?")
    bread, tax = await mean.embed_documents(
        [
            "Mix flour, water, yeast and salt, knead the dough, let it rise, then bake it.",
            "Corporate income tax law sets the rates and deductions companies must file.",
        ]
    )
    assert float(query @ bread) > float(query @ tax) + 0.2


async def test_bfloat16_vectors_stay_within_1e_4_of_float32(mean: LocalEmbedder) -> None:
    """bfloat16 weights (fast on AMX CPUs) give unit float32 vectors next to float32's."""
    bf16 = LocalEmbedder(LOCAL_EMBEDDING_MODEL, pooling="mean", precision="bfloat16")
    assert bf16.precision == "bfloat16" and bf16.model_id == mean.model_id
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    texts = [TEXT, "short", "A longer passage about baking sourdough bread at home. " * 8]
    texts += [f"{TEXT} " * (1 + i % 4) + f"number {i}" for i in range(40)]
    got, want = await bf16.embed_documents(texts), await mean.embed_documents(texts)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(axis=1)
    assert cos.min() > 0.9995, cos.min()  # measured: >= 0.99990 on 400 NegConstraint passages
    assert not np.array_equal(got, want)  # the arithmetic really is another one
    query = await bf16.embed_query(TEXT)
    assert float(query @ (await mean.embed_query(TEXT))) > 0.9995


def test_auto_precision_is_bfloat16_only_where_the_cpu_multiplies_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for fast, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(local_embedder_mod, "fast_bfloat16", lambda fast=fast: fast)
        made = Providers(Settings()).local_embedder(LOCAL_EMBEDDING_MODEL, None)
        assert isinstance(made, LocalEmbedder) and made.precision == want
        assert next(made.model.parameters()).dtype == getattr(torch, want)
    forced = Providers(Settings(embedding_precision="float32")).local_embedder(
        LOCAL_EMBEDDING_MODEL, None
    )
    assert isinstance(forced, LocalEmbedder) and forced.precision == "float32"


def test_fast_bfloat16_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    flags = local_models.cpu_flags()
    assert isinstance(flags, frozenset) and local_models.fast_bfloat16() == ("amx_bf16" in flags)
    monkeypatch.setattr(local_models, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert local_models.fast_bfloat16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # oneDNN told not to use AMX
    assert not local_models.fast_bfloat16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert local_models.fast_bfloat16()
    monkeypatch.setattr(local_models, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not local_models.fast_bfloat16()
