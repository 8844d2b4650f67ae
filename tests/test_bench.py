"""`ragd bench` at tiny sizes: the result's shape and sanity, never its timings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rag_service.api.app import create_app
from rag_service.benchmarks import ingest, query, query_processes
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


def test_cli_query_compares_two_serve_processes_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real `ragd serve` processes (with the default MiniLM) on a small index: both measured
    in interleaved rounds, requests spread evenly over the two, and stopped afterwards."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["bench", "query", "--chunks", "2000", "--queries", "20", "--clients", "1"]
    outcome = CliRunner().invoke(
        app, [*args, "--clients", "4", "--rounds", "2", "--out", str(tmp_path)]
    )
    assert outcome.exit_code == 0, outcome.output
    result = json.loads((tmp_path / "query.json").read_text())
    assert [level["clients"] for level in result["concurrency"]] == [1, 4]  # unchanged
    section = result["processes"]
    assert section["clients"] == 4 and section["rounds"] == 2
    one, two = section["one"], section["two"]
    assert (one["processes"], two["processes"]) == (1, 2)
    for mode in (one, two):
        assert mode["requests"] == 2 * 20 and mode["requests_per_s"] > 0
        assert len(mode["runs_requests_per_s"]) == 2
        check_percentiles(mode["latency_ms"])
    assert one["requests_by_process"] == [40]
    assert two["requests_by_process"] == [20, 20]
    assert section["ratio"] == pytest.approx(two["requests_per_s"] / one["requests_per_s"], 1e-2)
    assert section["ratio"] > 0
    assert "ratio two/one" in outcome.output


async def test_query_processes_need_the_default_embedder() -> None:
    with pytest.raises(ValueError, match="default embedder"):
        await query.run(create_app, chunks=10, embedder_factory=fake_embedder, processes=True)


async def test_a_serve_process_that_exits_is_reported_with_its_output(tmp_path: Path) -> None:
    env = {**os.environ, "RAGD_DATA_DIR": str(tmp_path / "data"), "RAGD_NO_SUCH_SETTING": "1"}
    proc = query_processes.start_serve(env, tmp_path / "serve.log")
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with .*RAGD_NO_SUCH_SETTING"):
            await query_processes.wait_healthy([proc], within_s=60)
    finally:
        proc.stop()
