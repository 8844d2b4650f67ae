"""`ragd bench` at tiny sizes: the result's shape and sanity, never its timings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from rag_service.api.app import create_app
from rag_service.benchmarks import ingest, query
from rag_service.cli import app
from tests.fakes import HashingEmbedder


def fake_embedder(model: str, pooling: str | None) -> HashingEmbedder:
    return HashingEmbedder()


def check_percentiles(ms: dict[str, float]) -> None:
    assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"], ms
    assert ms["mean"] > 0


def check_machine(result: dict[str, Any]) -> None:
    assert result["machine"]["cpu_count"] >= 1
    assert result["machine"]["loadavg"] >= 0


async def test_ingest_compares_sync_with_the_bare_embedder() -> None:
    result = await ingest.run(docs=3, repeat=1, embedder_factory=fake_embedder)
    assert result["chunks"] >= 3
    assert result["sync_chunks_per_s"] > 0 and result["raw_embed_texts_per_s"] > 0
    assert result["ratio"] > 0
    check_machine(result)


async def test_query_reports_latency_by_clients_and_the_overhead() -> None:
    result = await query.run(
        create_app, chunks=200, queries=12, clients=(1, 2), embedder_factory=fake_embedder
    )
    assert result["chunks"] == 200 and result["queries"] == 12
    assert result["retrieval"]["type"] == "hybrid"
    for part in result["components_ms"].values():
        check_percentiles(part)
    check_percentiles(result["search_1_client_ms"])
    assert set(result["overhead_ms"]) == {"p50", "p95", "p99", "mean"}
    assert [level["clients"] for level in result["concurrency"]] == [1, 2]
    for level in result["concurrency"]:
        assert level["requests"] == 12 and level["requests_per_s"] > 0
        check_percentiles(level["latency_ms"])
    check_machine(result)
    assert "overhead beyond embed + index" in query.summary(result)


def test_cli_index_writes_its_result(tmp_path: Path) -> None:
    args = ["bench", "index", "--size", "200", "--size", "500", "--queries", "5"]
    outcome = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert outcome.exit_code == 0, outcome.output
    result = json.loads((tmp_path / "index.json").read_text())
    assert [row["vectors"] for row in result["sizes"]] == [200, 500]
    for row in result["sizes"]:
        assert row["build_s"] >= 0 and row["upsert_vectors_per_s"] > 0
        check_percentiles(row["query_ms"])
    check_machine(result)
    assert "LocalIndex.query top-10" in outcome.output
