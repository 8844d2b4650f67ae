"""The answer eval: its metrics on hand-made cases, the QA file's errors, the extractive
answerer's choices, and a whole run through the real answer path on a tiny BEIR folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.evaluation.answers import (
    AnswerRecord,
    QAItem,
    cited_files,
    load_qa,
    run_answer_eval,
    score,
)
from rag_service.registry import Providers
from rag_service.retrieve.extractive import choose, sentences, wanted
from rag_service.retrieve.generate import NOT_FOUND_ANSWER as NOT_FOUND
from rag_service.retrieve.generate import repeats as loops
from rag_service.retrieve.search import ScoredChunk
from tests.fakes import HashingEmbedder


def item(id_: str, regex: str | None, doc: str | None = None) -> QAItem:
    return QAItem(
        id_, f"question {id_}?", regex and re.compile(regex, re.I), regex is not None, doc
    )


def record(id_: str, answer: str, first: float = 0.1, total: float = 1.0) -> AnswerRecord:
    return AnswerRecord(id_, f"question {id_}?", answer, [], first, total)


def test_metrics_on_hand_made_answers() -> None:
    items = [item("a", r"\b1544\b", "d1"), item("b", "sommerville", "d2"), item("u", None)]
    records = {
        "a": record("a", "Founded in 1544 [d1.txt] [d9.txt]", 0.2, 1.0),
        "b": record("b", "I could not find an answer to that in the documents.", 0.4, 3.0),
        "u": record("u", "It was Anni-Frid. [d3.txt]", 0.6, 2.0),
    }
    files = {"d1": "d1.txt", "d2": "d2.txt", "d3": "d3.txt", "d9": "d9.txt"}
    m = score(items, records, files)
    assert m["facts_right"] == 0.5 and m["wrong"] == ["b"]
    assert m["abstained_when_unanswerable"] == 0.0 and m["not_abstained"] == ["u"]
    assert m["abstained_when_answerable"] == 0.5
    assert m["citation_precision"] == 0.5  # a cites d1 (right) and d9 (wrong); b cites nothing
    assert m["answers_citing"] == 0.5
    assert m["first_token_s"] == {"p50": 0.4, "p95": 0.6} and m["answer_s"]["p50"] == 2.0
    assert m["looping_answers"] == 0


def test_loops_citations_and_abstention_phrases() -> None:
    assert loops("a bit of a miracle, " * 3)
    assert not loops("a bit of a miracle, and then a bit of a miracle again")
    answer = "Steep at 80 degrees [green-tea.txt].\n\nSources: green-tea.txt, solar-system.md"
    assert cited_files(answer, ["green-tea.txt", "solar-system.md", "x.md"]) == {
        "green-tea.txt",
        "solar-system.md",
    }
    for text in ("I couldn't find that.", "The documents do not mention it.", NOT_FOUND):
        m = score([item("u", None)], {"u": record("u", text)}, {})
        assert m["abstained_when_unanswerable"] == 1.0, text


def test_a_bad_qa_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    good = {"id": "1", "question": "Why?", "answer_regex": "x", "answerable": True}
    for bad, message in [
        ("{not json", "qa.jsonl:2: not JSON"),
        (json.dumps({**good, "answer_regex": "(unclosed"}), "qa.jsonl:2: 'answer_regex'"),
        (json.dumps({**good, "question": ""}), "qa.jsonl:2: 'question'"),
        (json.dumps({**good, "answer_regex": None}), "qa.jsonl:2: an answerable item"),
    ]:
        path.write_text(json.dumps(good) + "\n" + bad + "\n")
        with pytest.raises(InvalidRequest, match=re.escape(message)):
            load_qa(path)
    path.write_text("\n")
    with pytest.raises(InvalidRequest, match="no questions"):
        load_qa(path)


def chunk(key: str, text: str, rank: int = 0) -> ScoredChunk:
    return ScoredChunk(f"{key}:{rank}", text, 1.0 - rank / 10, {"filename": key, "text": text})


async def test_the_extractive_answerer_picks_the_sentence_that_answers() -> None:
    chunks = [
        chunk(
            "prussia.txt",
            "Albert was the first Duke of Prussia. He supported the Reformation. "
            "Albert established schools in every town and founded Königsberg University in 1544.",
        ),
        chunk("other.txt", "The university has a large library and many students.", 1),
    ]
    chosen = await choose(
        HashingEmbedder(), "In what year did Albert found the university?", chunks
    )
    assert chosen and "1544" in chosen[0].text and chosen[0].key == "prussia.txt"
    # Asked for a year that no sentence gives (other than the question's own): not found.
    nothing = await choose(HashingEmbedder(), "When did the library of Prussia close?", chunks[1:])
    assert nothing == []
    assert wanted("Who wrote it?") is not None and wanted("Why is the sky blue?") is None
    text = (
        "A heading line\nThis sentence has enough words and it wraps\nover two lines of text."
        "\n\nShort. And one more here."
    )
    assert sentences(text) == [
        "This sentence has enough words and it wraps over two lines of text.",
        "And one more here.",
    ]


def tiny_set(tmp_path: Path) -> tuple[Path, Path]:
    """A two-document BEIR folder and two questions over it, one without an answer."""
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "tea", "title": "Green tea", "text": "Green tea is brewed with water at 80 C."},
        {"_id": "moon", "title": "Moon", "text": "The Moon was first reached by people in 1969."},
    ]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "tea"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\ttea\t1\n")
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": "1", "question": "In what year did people first reach the Moon?",
         "answer_regex": r"\b1969\b", "answerable": True, "doc_id": "moon"},
        {"id": "2", "question": "Who first brewed green tea?", "answer_regex": None,
         "answerable": False, "doc_id": None},
    ]  # fmt: skip
    qa.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder, qa


async def test_a_whole_run_through_the_answer_path(tmp_path: Path) -> None:
    folder, qa = tiny_set(tmp_path)
    embedder = HashingEmbedder()
    result = await run_answer_eval(
        Settings(data_dir=tmp_path / "unused"),
        folder,
        qa,
        make_providers=lambda st: Providers(st, embedder_factory=lambda m, p: embedder),
    )
    assert result.model == "extractive" and result.questions == 2
    assert result.metrics["facts_right"] == 1.0
    assert result.metrics["abstained_when_unanswerable"] == 1.0
    assert result.metrics["citation_precision"] == 1.0  # "[moon.txt]"
    assert result.answers[0].sources and result.answers[0].answer.endswith("[moon.txt]")


def test_the_cli_prints_the_table_and_names_a_bad_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from rag_service import cli

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    doc = {"_id": "moon", "title": "Moon", "text": "People first reached the Moon in 1969."}
    (folder / "corpus.jsonl").write_text(json.dumps(doc) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "moon"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\tmoon\t1\n")
    qa = tmp_path / "qa.jsonl"
    row = {"id": "1", "question": "When did people first reach the Moon?",
           "answer_regex": "1969", "answerable": True, "doc_id": "moon"}  # fmt: skip
    qa.write_text(json.dumps(row) + "\n")
    embedder = HashingEmbedder()
    monkeypatch.setattr(
        cli, "make_providers", lambda st: Providers(st, embedder_factory=lambda m, p: embedder)
    )
    out = tmp_path / "answers.json"
    args = ["eval", "--beir", str(folder), "--answers", str(qa), "--json", str(out)]
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == 0, done.output
    assert "facts right" in done.output and json.loads(out.read_text())["metrics"]["facts_right"]
    qa.write_text(json.dumps(row) + "\n{oops\n")
    bad = CliRunner().invoke(cli.app, args)
    assert bad.exit_code == 1 and "qa.jsonl:2: not JSON" in bad.output


async def echo_server(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny OpenAI-compatible server: streams the first sentence of the first document in
    the prompt with its file, word by word (an answer as a grounded model would give it)."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    system = json.loads(body)["messages"][0]["content"]
    found = re.search(r'<document file="([^"]+)">\n(.+?)(?<=[.!?])\s', system, re.S)
    answer = f"{found.group(2).split(chr(10))[-1]} [{found.group(1)}]" if found else "No idea."
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
    for word in answer.split(" "):
        delta = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
        await send({"type": "http.response.body", "body": f"data: {json.dumps(delta)}\n\n".encode(),
                    "more_body": True})  # fmt: skip
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def test_the_same_eval_runs_against_an_answer_server(tmp_path: Path) -> None:
    from tests.serving import serve

    folder, qa = tiny_set(tmp_path)
    embedder = HashingEmbedder()
    async with serve(echo_server) as url:
        result = await run_answer_eval(
            Settings(data_dir=tmp_path / "unused", generation_url=f"{url}/v1"),
            folder,
            qa,
            make_providers=lambda st: Providers(st, embedder_factory=lambda m, p: embedder),
        )
    assert result.model == "default"  # the server's, not the extractive answerer
    moon = result.answers[0]
    assert moon.answer.startswith("The Moon was first reached") and "[moon.txt]" in moon.answer
    assert result.metrics["facts_right"] == 1.0 and result.metrics["citation_precision"] == 1.0
    assert moon.first_token_s <= moon.answer_s
