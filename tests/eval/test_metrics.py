"""The metrics against cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from rag_service.evaluation.metrics import (
    mean_scores,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    score_query,
)


def test_ndcg_one_relevant_at_rank_three() -> None:
    # DCG = 1 / log2(4) = 0.5; ideal DCG = 1 / log2(2) = 1.
    assert ndcg_at_k(["a", "b", "rel", "c"], {"rel": 1}, 10) == pytest.approx(0.5)


def test_ndcg_graded_and_two_relevant() -> None:
    judged = {"x": 2, "y": 1, "z": 0}
    # ranking y, n, x: DCG = 1/log2(2) + 2/log2(4) = 1 + 1 = 2
    # ideal x, y:     IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.63093 = 2.63093
    expected = 2 / (2 + 1 / math.log2(3))
    assert ndcg_at_k(["y", "n", "x"], judged, 10) == pytest.approx(expected)
    assert ndcg_at_k(["x", "y"], judged, 10) == pytest.approx(1.0)


def test_ndcg_cut_at_k() -> None:
    ranking = [f"d{i}" for i in range(10)] + ["rel"]
    assert ndcg_at_k(ranking, {"rel": 1}, 10) == 0.0
    assert ndcg_at_k(ranking, {"rel": 1}, 11) == pytest.approx(1 / math.log2(12))


def test_recall_counts_only_positive_judgements() -> None:
    judged = {"a": 1, "b": 1, "c": 1, "d": 0}
    assert recall_at_k(["a", "d", "x", "c"], judged, 10) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "d", "x", "c"], judged, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a"], {"d": 0}, 10) == 0.0


def test_mrr_first_relevant_within_k() -> None:
    assert mrr_at_k(["n", "z", "r1", "r2"], {"r1": 1, "r2": 1, "z": 0}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["n"] * 10 + ["r"], {"r": 1}, 10) == 0.0
    assert mrr_at_k(["r"], {"r": 1}, 10) == 1.0


def test_mean_over_judged_queries_missing_ranking_counts_as_empty() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has nothing relevant
    scores = mean_scores({"q1": ["x", "a"]}, qrels)  # q2 was never ranked
    assert scores["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert scores["ndcg@10"] == pytest.approx((1 / math.log2(3)) / 2)
    assert scores["recall@10"] == pytest.approx(0.5)
    assert scores["recall@100"] == pytest.approx(0.5)
    assert score_query(["x", "a"], qrels["q1"])["mrr@10"] == pytest.approx(0.5)
