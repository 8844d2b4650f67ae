"""A whole eval on a tiny BEIR folder: real sync, index and query path, hashing embedder."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag_service import cli
from rag_service.cli import app
from rag_service.config import Settings
from rag_service.errors import BackendError, InvalidRequest
from rag_service.evaluation.beir import load_beir
from rag_service.evaluation.run import MODES, rank_documents, run_eval
from rag_service.providers.protocols import Reranker
from rag_service.registry import Providers
from rag_service.retrieve.search import ScoredChunk
from tests.fakes import HashingEmbedder

CORPUS = {
    "volcano": ("Olympus Mons", "Olympus Mons on Mars is the tallest volcano in the Solar System."),
    "tea": ("", "Green tea is brewed with water below boiling, around eighty degrees."),
    "bread": ("Sourdough", "Sourdough bread rises with wild yeast during a long fermentation."),
    "sci/7": ("", "Penguins are flightless seabirds of the southern hemisphere."),
    "long": ("Rivers", " ".join(["The Danube river flows through Vienna and Budapest."] * 60)),
}
QUERIES = {
    "q1": "tallest volcano Mars",
    "q2": "flightless seabirds southern hemisphere",
    "q3": "Danube Vienna Budapest",
    "q4": "wild yeast sourdough fermentation",
    "unjudged": "anything",
}
QRELS = [("q1", "volcano", 1), ("q2", "sci/7", 1), ("q3", "long", 2), ("q4", "bread", 1)]


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as f:
        for doc_id, (title, text) in CORPUS.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for qid, text in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in QRELS]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny")


class TeaReranker:
    """Puts whatever mentions tea first: a reranked mode that really reranks scores worse."""

    model_id = "test/tea"

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        return [1.0 if "tea" in t.lower().split() else 0.0 for t in texts]


def no_reranker(model: str) -> Reranker:
    raise BackendError(f"cannot load reranking model {model!r}")


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> HashingEmbedder:
    """The model fakes for runs started from the CLI, where no factory can be passed."""
    embedder = HashingEmbedder()
    monkeypatch.setattr(cli, "make_providers", fakes(embedder, no_reranker))
    return embedder


def fakes(
    embedder: HashingEmbedder, reranker: Callable[[str], Reranker]
) -> Callable[[Settings], Providers]:
    return lambda st: Providers(
        st, embedder_factory=lambda model, pooling: embedder, reranker_factory=reranker
    )


def test_load_keeps_judged_queries_only(beir_dir: Path) -> None:
    beir = load_beir(beir_dir)
    assert set(beir.queries) == {"q1", "q2", "q3", "q4"}
    assert beir.corpus["volcano"].body.startswith("Olympus Mons\n\nOlympus Mons on Mars")
    assert beir.corpus["tea"].body.startswith("Green tea")
    assert beir.corpus["sci/7"].filename == "sci%2F7.txt"


async def test_every_mode_finds_the_relevant_document(tmp_path: Path, beir_dir: Path) -> None:
    embedder = HashingEmbedder()
    stages: list[str] = []
    result = await run_eval(
        Settings(data_dir=tmp_path / "unused"),
        beir_dir,
        depth=3,
        progress=lambda stage, done, total: stages.append(stage),
        make_providers=fakes(embedder, no_reranker),
    )
    assert (result.documents, result.queries) == (5, 4)
    assert result.chunks > result.documents  # the long document was split
    measured = {m.name for m in MODES if not m.rerank}
    assert set(result.metrics) == measured and "hybrid+exclusions" in measured
    for scores in result.metrics.values():
        assert scores == {"ndcg@10": 1.0, "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    assert set(result.not_measured) == {m.name for m in MODES if m.rerank}
    assert set(result.not_measured.values()) == {"not measured: no reranker weights offline"}
    assert result.settings["reranker_error"].startswith("cannot load reranking model")
    assert stages.count("indexing") == 5 and stages.count("hybrid") == 4
    assert not (tmp_path / "unused").exists()  # the run kept nothing


async def test_reranked_modes_go_through_the_reranker(tmp_path: Path, beir_dir: Path) -> None:
    embedder = HashingEmbedder()
    result = await run_eval(
        Settings(data_dir=tmp_path / "unused"),
        beir_dir,
        modes=[m for m in MODES if m.name in ("keyword", "keyword+rerank", "hybrid+rerank")],
        make_providers=fakes(embedder, lambda model: TeaReranker()),
    )
    assert not result.not_measured
    # keyword hits never include the tea passage: reranking only reorders what was retrieved
    assert result.metrics["keyword"]["mrr@10"] == result.metrics["keyword+rerank"]["mrr@10"] == 1.0
    # hybrid retrieves every passage (threshold 0) and the reranker puts tea first each time
    assert result.metrics["hybrid+rerank"]["mrr@10"] == pytest.approx(0.5)
    assert result.metrics["hybrid+rerank"]["recall@10"] == 1.0


async def test_exclusion_modes_search_without_the_excluded_part(tmp_path: Path) -> None:
    root = tmp_path / "neg"
    (root / "qrels").mkdir(parents=True)
    docs = {
        "plain": "Sourdough bread, baked slowly.",
        "yeast": "Wild yeast makes sourdough bread rise; wild yeast lives in flour.",
    }
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items())
    )
    query = {"_id": "q", "text": "Sourdough bread, but don't mention wild yeast."}
    (root / "queries.jsonl").write_text(json.dumps(query) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\tplain\t1\n")
    embedder = HashingEmbedder()
    names = ("vector", "keyword", "vector+exclusions", "keyword+exclusions")
    result = await run_eval(
        Settings(data_dir=tmp_path / "unused"),
        root,
        modes=[m for m in MODES if m.name in names],
        keyword_match_mode="or",  # "mention" is in no document: "and" would find nothing
        make_providers=fakes(embedder, no_reranker),
    )
    assert result.settings["keyword_match_mode"] == "or"
    mrr = {mode: scores["mrr@10"] for mode, scores in result.metrics.items()}
    assert mrr == {
        "vector": 0.5,
        "keyword": 0.5,
        "vector+exclusions": 1.0,
        "keyword+exclusions": 1.0,
    }


def test_document_scored_by_its_best_chunk() -> None:
    def chunk(key: str, score: float) -> ScoredChunk:
        return ScoredChunk(id=f"{key}:{score}", text="", score=score, metadata={"filename": key})

    chunks = [chunk("b.txt", 0.9), chunk("a.txt", 0.5), chunk("b.txt", 0.2), chunk("x", 0.8)]
    chunks.append(chunk("a.txt", 0.95))  # out of order: still a's best
    assert rank_documents(chunks, {"a.txt": "A", "b.txt": "B"}) == ["A", "B"]


def test_cli_prints_the_table_and_writes_json(
    tmp_path: Path, beir_dir: Path, hashing: HashingEmbedder
) -> None:
    out = tmp_path / "eval.json"
    run = CliRunner().invoke(app, ["eval", "--beir", str(beir_dir), "--json", str(out)])
    assert run.exit_code == 0, run.output
    text = " ".join(run.output.split())
    assert "│ hybrid-max │ 1.0000 │" in text and "not measured: no reranker weights offline" in text
    data = json.loads(out.read_text())
    assert data["vector"]["ndcg@10"] == 1.0 and data["keyword"]["mrr@10"] == 1.0
    assert data["meta"]["documents"] == 5 and "vector+rerank" in data["meta"]["not_measured"]
    assert "keyword match mode and" in text  # the instance default, said in the title and json
    assert data["meta"]["settings"]["keyword_match_mode"] == "and"


def test_cli_runs_in_the_keyword_match_mode_asked(
    tmp_path: Path, beir_dir: Path, hashing: HashingEmbedder
) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", "--beir", str(beir_dir), "--json", str(out), "--keyword-match-mode", "or"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "keyword match mode or" in " ".join(run.output.split())
    assert json.loads(out.read_text())["meta"]["settings"]["keyword_match_mode"] == "or"


def test_cli_refuses_a_folder_without_qrels(tmp_path: Path, hashing: HashingEmbedder) -> None:
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    run = CliRunner().invoke(app, ["eval", "--beir", str(tmp_path)])
    assert run.exit_code == 1
    assert "missing qrels/test.tsv" in run.output


def test_qrels_row_without_a_number_is_named(beir_dir: Path) -> None:
    with (beir_dir / "qrels" / "test.tsv").open("a") as f:
        f.write("q1\tvolcano\tyes\n")
    with pytest.raises(InvalidRequest, match=r"test.tsv:6: expected query-id"):
        load_beir(beir_dir)
