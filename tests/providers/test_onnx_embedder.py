"""OnnxEmbedder with the shipped all-MiniLM-L6-v2 and real onnxruntime: vectors against torch's,
the on-disk cache (reuse, damaged files rebuilt), pooling, batching, and index identity.

One export (fp32, then int8 from it) is shared by the module: it takes 10-30 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from rag_service.config import LOCAL_EMBEDDING_MODEL, Settings
from rag_service.errors import BackendError, IndexMismatch
from rag_service.providers.local_embedder import LocalEmbedder
from rag_service.providers.local_index import LocalIndex
from rag_service.providers.onnx_embedder import MANIFEST, MODEL_FILE, OnnxEmbedder
from rag_service.providers.protocols import Embedder, IndexSpec
from rag_service.registry import Providers

SAMPLE_DOCS = Path(__file__).resolve().parents[2] / "rag_service" / "sample_docs"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "dog", "ran"]


def passages() -> list[str]:
    """Paragraphs of the sample documents, a few short texts and one past max_tokens."""
    paragraphs = [
        p.strip()
        for doc in sorted([*SAMPLE_DOCS.glob("*.md"), *SAMPLE_DOCS.glob("*.txt")])
        for p in doc.read_text(encoding="utf-8").split("\n\n")
        if len(p.strip()) > 40
    ]
    short = ["How do I bake bread?", "opening hours on Sunday", "planets of the solar system"]
    return [*paragraphs[:30], *short, " ".join(WORDS * 60)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx") / "data"


@pytest.fixture(scope="module")
def cache(data_dir: Path) -> Path:
    return data_dir / "models" / "onnx"  # where the registry puts it


@pytest.fixture(scope="module")
def int8(cache: Path) -> OnnxEmbedder:
    return OnnxEmbedder(LOCAL_EMBEDDING_MODEL, cache_dir=cache, int8=True)  # exports fp32 too


@pytest.fixture(scope="module")
def fp32(cache: Path, int8: OnnxEmbedder) -> OnnxEmbedder:
    return OnnxEmbedder(LOCAL_EMBEDDING_MODEL, cache_dir=cache)


@pytest.fixture(scope="module")
def torch_mean() -> LocalEmbedder:
    return LocalEmbedder(LOCAL_EMBEDDING_MODEL, pooling="mean")


def cos_gap(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of |1 - cos| of unit vectors."""
    return float(np.abs(1.0 - (a.astype(np.float64) * b).sum(axis=1)).max())


def test_attributes(fp32: OnnxEmbedder, int8: OnnxEmbedder, torch_mean: LocalEmbedder) -> None:
    assert isinstance(fp32, Embedder) and isinstance(int8, Embedder)
    assert fp32.model_id == LOCAL_EMBEDDING_MODEL  # the same vectors: the same identity
    assert int8.model_id == LOCAL_EMBEDDING_MODEL + ":onnx-int8"  # other vectors: its own
    for e in (fp32, int8):
        assert (e.dimensions, e.max_tokens, e.pooling, e.query_instruction) == (
            384,
            256,
            "mean",
            "",
        )
        assert e.in_process and e.threads == torch_mean.threads
        assert e.count_tokens("hello world") == 2
        options = e.model.session.get_session_options()
        assert options.inter_op_num_threads == 1
        assert options.intra_op_num_threads == (e.threads if e.lanes == 1 else 1)
    assert fp32.onnx_path.parent.parent == int8.onnx_path.parent.parent
    assert (fp32.onnx_path.parent.name[-5:], int8.onnx_path.parent.name[-5:]) == ("-fp32", "-int8")
    fused = json.loads((fp32.onnx_path.parent / MANIFEST).read_text())["fused"]
    assert fused["Attention"] == 6  # the BERT optimizer ran


async def test_fp32_matches_torch(fp32: OnnxEmbedder, torch_mean: LocalEmbedder) -> None:
    texts = passages()
    got, want = await fp32.embed_documents(texts), await torch_mean.embed_documents(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cos_gap(got, want) < 1e-5
    query = await fp32.embed_query("How do I bake bread?")
    assert query.shape == (384,)
    assert cos_gap(query[None], (await torch_mean.embed_query("How do I bake bread?"))[None]) < 1e-5


async def test_int8_is_close_to_torch(int8: OnnxEmbedder, torch_mean: LocalEmbedder) -> None:
    texts = passages()
    got, want = await int8.embed_documents(texts), await torch_mean.embed_documents(texts)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert 1e-5 < cos_gap(got, want) < 0.02  # changed, a little
    query, docs = await int8.embed_query("How do I bake bread?"), got
    assert texts[int(np.argmax(docs @ query))] in passages()[:30]  # still finds a passage


async def test_cls_pooling(cache: Path, fp32: OnnxEmbedder) -> None:
    onnx_cls = OnnxEmbedder(LOCAL_EMBEDDING_MODEL, pooling="cls", cache_dir=cache)
    torch_cls = LocalEmbedder(LOCAL_EMBEDDING_MODEL, pooling="cls")
    assert onnx_cls.built == [] and onnx_cls.onnx_path == fp32.onnx_path  # one export, any pooling
    texts = passages()[:12]
    got = await onnx_cls.embed_documents(texts)
    assert cos_gap(got, await torch_cls.embed_documents(texts)) < 1e-5
    assert cos_gap(got, await fp32.embed_documents(texts)) > 1e-3  # not mean pooling


async def test_batches_restore_input_order_and_empty(fp32: OnnxEmbedder) -> None:
    texts = [" ".join(WORDS[: 1 + i % 10]) * (1 + i % 7) for i in range(40)]  # > batch_size
    together = await fp32.embed_documents(texts)
    alone = np.stack([(await fp32.embed_documents([t]))[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = await fp32.embed_documents([texts[i] for i in order])
    np.testing.assert_allclose(shuffled, together[order], atol=1e-5)
    empty = await fp32.embed_documents([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_cache_is_reused(cache: Path, int8: OnnxEmbedder, fp32: OnnxEmbedder) -> None:
    assert int8.built == ["fp32", "int8"] and fp32.built == []
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob(f"*/{MODEL_FILE}")}
    assert len(stamps) == 2
    again = OnnxEmbedder(LOCAL_EMBEDDING_MODEL, cache_dir=cache, int8=True)
    assert again.built == [] and again.onnx_path == int8.onnx_path
    assert {p: p.stat().st_mtime_ns for p in cache.glob(f"*/{MODEL_FILE}")} == stamps
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temps


async def test_damaged_models_are_rebuilt(
    tmp_path: Path, cache: Path, int8: OnnxEmbedder, torch_mean: LocalEmbedder
) -> None:
    shutil.copytree(cache, tmp_path / "onnx")
    model = tmp_path / "onnx" / int8.onnx_path.parent.name / MODEL_FILE
    texts = passages()[:8]
    want = await int8.embed_documents(texts)

    # cut short (a disk that filled up): the manifest's size and digest no longer match
    with model.open("r+b") as fh:
        fh.truncate(model.stat().st_size // 2)
    rebuilt = OnnxEmbedder(LOCAL_EMBEDDING_MODEL, cache_dir=tmp_path / "onnx", int8=True)
    assert rebuilt.built == ["int8"]  # from the intact fp32 export
    np.testing.assert_allclose(await rebuilt.embed_documents(texts), want, atol=1e-6)

    # a file the manifest vouches for but ONNX Runtime cannot load (e.g. a newer format)
    junk = b"not an onnx model"
    model.write_bytes(junk)
    manifest = model.parent / MANIFEST
    info = json.loads(manifest.read_text()) | {
        "bytes": len(junk),
        "sha256": hashlib.sha256(junk).hexdigest(),
    }
    manifest.write_text(json.dumps(info))
    rebuilt = OnnxEmbedder(LOCAL_EMBEDDING_MODEL, cache_dir=tmp_path / "onnx", int8=True)
    assert rebuilt.built == ["int8"]
    got = await rebuilt.embed_documents(texts)
    assert cos_gap(got, await torch_mean.embed_documents(texts)) < 0.02


def test_a_cache_that_cannot_be_written_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(BackendError, match=r"to ONNX \(fp32\) in .*not-a-folder.* failed"):
        OnnxEmbedder(LOCAL_EMBEDDING_MODEL, cache_dir=tmp_path / "not-a-folder" / "onnx")


def test_registry_builds_the_configured_runtime(data_dir: Path, fp32: OnnxEmbedder) -> None:
    made = Providers(Settings(data_dir=data_dir, embedding_runtime="onnx")).local_embedder(
        LOCAL_EMBEDDING_MODEL, None
    )
    assert isinstance(made, OnnxEmbedder) and made.built == [] and made.variant == "fp32"
    torch_made = Providers(Settings(data_dir=data_dir)).local_embedder(LOCAL_EMBEDDING_MODEL, None)
    assert type(torch_made) is LocalEmbedder
    with pytest.raises(ValidationError):
        Settings(embedding_runtime="onnx-fp16")


async def test_an_index_of_torch_vectors_refuses_int8_ones(
    tmp_path: Path, fp32: OnnxEmbedder, int8: OnnxEmbedder, torch_mean: LocalEmbedder
) -> None:
    def spec(e: Embedder) -> IndexSpec:
        return IndexSpec(e.model_id, e.pooling, e.dimensions)  # as Providers.index makes it

    await (await LocalIndex.aopen(tmp_path / "index", spec(torch_mean))).close()
    await (await LocalIndex.aopen(tmp_path / "index", spec(fp32))).close()  # same vectors
    with pytest.raises(IndexMismatch, match="onnx-int8"):
        await LocalIndex.aopen(tmp_path / "index", spec(int8))
