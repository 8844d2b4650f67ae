"""LocalReranker's code path on a tiny random BERT cross-encoder built from a config.

No reranker weights can be fetched here, so the model is random: these tests check loading,
shapes, input order, the [0, 1] squashing and batching against transformers run directly,
never ranking quality.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from rag_service.errors import BackendError
from rag_service.providers.local_models import minilm_path
from rag_service.providers.local_reranker import LocalReranker
from rag_service.providers.protocols import Reranker

QUERY = "how long to steep green tea"
TEXTS = [
    "Steep green tea for two to three minutes in water at 80 degrees.",
    "Jupiter is the largest planet.",
    "Bulk fermentation of sourdough takes four to six hours at room temperature, longer "
    "when the kitchen is cold, and the dough should roughly double in size.",
    "tea",
    "",
]


def tiny_cross_encoder(path: Path, num_labels: int = 1) -> Path:
    """A 2-layer BERT with MiniLM's tokenizer and random weights, saved like a hub model."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cross_encoder(tmp_path_factory.mktemp("reranker"))


def direct_logits(path: Path, query: str, texts: list[str]) -> torch.Tensor:
    """Each pair scored alone (no padding) by transformers itself."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        rows = [model(**tokenizer(query, t, return_tensors="pt")).logits[0] for t in texts]
    return torch.stack(rows)


async def test_scores_are_sigmoids_of_the_logits_in_input_order(model_dir: Path) -> None:
    reranker = LocalReranker(str(model_dir), batch_size=2)
    assert isinstance(reranker, Reranker) and reranker.model_id == str(model_dir)
    scores = await reranker.rerank(QUERY, TEXTS)
    expected = torch.sigmoid(direct_logits(model_dir, QUERY, TEXTS)[:, 0]).tolist()
    assert len(scores) == len(TEXTS)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(scores)) == len(scores)  # a random model still tells the texts apart
    reverse = await reranker.rerank(QUERY, TEXTS[::-1])
    assert reverse == pytest.approx(scores[::-1], abs=1e-5)
    assert await reranker.rerank(QUERY, []) == []


async def test_batch_size_and_length_truncation_do_not_change_scores(model_dir: Path) -> None:
    one_batch = await LocalReranker(str(model_dir), batch_size=64).rerank(QUERY, TEXTS * 3)
    small = await LocalReranker(str(model_dir), batch_size=1).rerank(QUERY, TEXTS * 3)
    assert one_batch == pytest.approx(small, abs=1e-5)
    short = LocalReranker(str(model_dir), max_tokens=8)
    assert short.max_tokens == 8
    long_text = "tea " * 2000  # far past the model's 512 positions: truncated, not an error
    (score,) = await short.rerank(QUERY, [long_text])
    assert 0.0 <= score <= 1.0


async def test_two_label_models_use_the_softmax_of_the_relevant_label(tmp_path: Path) -> None:
    path = tiny_cross_encoder(tmp_path / "two", num_labels=2)
    scores = await LocalReranker(str(path)).rerank(QUERY, TEXTS[:3])
    expected = torch.softmax(direct_logits(path, QUERY, TEXTS[:3]), dim=-1)[:, 1].tolist()
    assert scores == pytest.approx(expected, abs=1e-5)


def test_bad_models_are_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot load reranking model"):
        LocalReranker(str(tmp_path / "missing"))
    with pytest.raises(BackendError, match="3 labels"):
        LocalReranker(str(tiny_cross_encoder(tmp_path / "three", num_labels=3)))
