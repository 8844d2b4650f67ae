"""Answer quality: a question set run through the real query and answer path, scored on facts
right, honest "not found", loops, citations and time.

A QA file is JSON lines: `{"id", "question", "answer_regex", "answerable", "doc_id"}` (see
../shared/data/qa/README.md); `answer_regex` is searched case-insensitively in the answer."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.evaluation.beir import load_beir, write_corpus
from rag_service.evaluation.run import INSTANCE, EvalProgress, ingest_corpus
from rag_service.registry import Providers
from rag_service.retrieve.generate import repeats
from rag_service.runtime import Runtime

# What an answer that does not know says (ragd's own phrasing and common LLM ones).
ABSTAINS = re.compile(
    r"could ?n[o']t find|can ?n[o']t find|cannot find|not find (an|any)|no (relevant )?information"
    r"|not (mentioned|stated|in the documents)|do(es)? ?n[o']t (know|say|mention|contain)"
    r"|no answer|unable to (find|answer)",
    re.IGNORECASE,
)
CITED = re.compile(r"\[([^\[\]\n]{1,200}?)\]")  # inline [file]
SOURCES_LINE = re.compile(r"^\s*Sources?:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answer_regex: re.Pattern[str] | None
    answerable: bool
    doc_id: str | None


def load_qa(path: Path) -> list[QAItem]:
    """The QA file's items; a bad line is an error that names it."""
    if not path.is_file():
        raise InvalidRequest(f"QA file not found: {path}")
    items: list[QAItem] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{where}: not JSON ({exc.msg})") from None
            items.append(_item(row, where))
    if not items:
        raise InvalidRequest(f"{path} holds no questions")
    return items


def _item(row: Any, where: str) -> QAItem:
    if not isinstance(row, dict):
        raise InvalidRequest(f"{where}: each line must be a JSON object")
    question, answerable = row.get("question"), row.get("answerable", True)
    if not isinstance(question, str) or not question.strip():
        raise InvalidRequest(f"{where}: 'question' must be a non-empty string")
    if not isinstance(answerable, bool):
        raise InvalidRequest(f"{where}: 'answerable' must be true or false")
    raw = row.get("answer_regex")
    if answerable and not isinstance(raw, str):
        raise InvalidRequest(f"{where}: an answerable item needs 'answer_regex'")
    try:
        pattern = re.compile(raw, re.IGNORECASE) if isinstance(raw, str) else None
    except re.error as exc:
        raise InvalidRequest(f"{where}: 'answer_regex' does not compile: {exc}") from None
    doc = row.get("doc_id")
    return QAItem(str(row.get("id", where)), question, pattern, answerable, doc and str(doc))


def cited_files(answer: str, known: Sequence[str]) -> set[str]:
    """The known file names the answer cites, inline `[file]` or on a `Sources:` line."""
    named = {m.strip() for m in CITED.findall(answer)}
    for line in SOURCES_LINE.findall(answer):
        named.update(part.strip() for part in line.split(","))
    return {name for name in known if name in named}


@dataclass
class AnswerRecord:
    id: str
    question: str
    answer: str
    sources: list[str]  # the files of the chunks the answer was given (machine-readable)
    first_token_s: float
    answer_s: float
    model: str = ""


def score(
    items: Sequence[QAItem], records: Mapping[str, AnswerRecord], file_of: Mapping[str, str]
) -> dict[str, Any]:
    """The metrics of one run; `file_of` maps a doc id to its file name."""
    answerable = [i for i in items if i.answerable]
    unanswerable = [i for i in items if not i.answerable]
    right = [
        i for i in answerable if i.answer_regex and i.answer_regex.search(records[i.id].answer)
    ]
    abstained = [i for i in unanswerable if ABSTAINS.search(records[i.id].answer)]
    wrongly_abstained = [i for i in answerable if ABSTAINS.search(records[i.id].answer)]
    looped = [i for i in items if repeats(records[i.id].answer)]
    precisions = []
    for item in answerable:
        cited = cited_files(records[item.id].answer, list(file_of.values()))
        if cited:
            holding = {file_of.get(item.doc_id or "", "")}
            precisions.append(len(cited & holding) / len(cited))
    firsts = [r.first_token_s for r in records.values()]
    totals = [r.answer_s for r in records.values()]
    return {
        "facts_right": _share(len(right), len(answerable)),
        "abstained_when_unanswerable": _share(len(abstained), len(unanswerable)),
        "abstained_when_answerable": _share(len(wrongly_abstained), len(answerable)),
        "looping_answers": len(looped),
        "citation_precision": round(statistics.fmean(precisions), 4) if precisions else None,
        "answers_citing": _share(len(precisions), len(answerable)),
        "first_token_s": _percentiles(firsts),
        "answer_s": _percentiles(totals),
        "wrong": sorted(i.id for i in answerable if i not in right),
        "not_abstained": sorted(i.id for i in unanswerable if i not in abstained),
    }


def _holds(item: QAItem, answer: str) -> bool:
    return item.answer_regex is not None and item.answer_regex.search(answer) is not None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p95": 0.0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": round(statistics.median(ordered), 3), "p95": at(0.95)}


@dataclass
class AnswerEval:
    dataset: str
    date: str
    model: str
    questions: int
    metrics: dict[str, Any] = field(default_factory=dict)
    answers: list[AnswerRecord] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "date": self.date,
            "model": self.model,
            "questions": self.questions,
            "metrics": self.metrics,
            "settings": self.settings,
            "answers": [vars(a) for a in self.answers],
        }


class Stopwatch:
    """Time to the first piece and to the end of an answer."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None

    def piece(self) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.started

    def total(self) -> float:
        return time.perf_counter() - self.started


async def run_answer_eval(
    settings: Settings,
    folder: Path,
    qa_path: Path,
    *,
    model: str | None = None,
    work_dir: Path | None = None,
    progress: EvalProgress | None = None,
    make_providers: Callable[[Settings], Providers] = Providers,
) -> AnswerEval:
    """Index the BEIR folder's corpus (in `work_dir`, kept and synced again next time, or in
    a temporary folder), then ask every question through the real answer path."""
    items = load_qa(qa_path)
    beir = load_beir(folder)
    report = progress or (lambda stage, done, total: None)
    with contextlib.ExitStack() as stack:
        root = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        st = settings.model_copy(
            update={"data_dir": root / "data", "database_url": None, "backend": "local"}
        )
        write_corpus(beir, root / "corpus")
        async with Runtime(st, make_providers(st)) as rt:
            await ingest_corpus(rt, beir, root / "corpus", report)
            result = AnswerEval(
                dataset=f"{folder.name} / {qa_path.name}",
                date=datetime.date.today().isoformat(),
                model=model or "",
                questions=len(items),
            )
            records: dict[str, AnswerRecord] = {}
            for item in items:
                records[item.id] = await ask(rt, item, model)
                report("answering", len(records), len(items))
    result.answers = list(records.values())
    result.model = result.answers[0].model
    file_of = {doc_id: doc.filename for doc_id, doc in beir.corpus.items()}
    result.metrics = score(items, records, file_of)
    result.settings = {
        "generation_server": bool(st.generation_url),
        "max_tokens": st.generation_max_tokens,
    }
    return result


async def ask(rt: Runtime, item: QAItem, model: str | None) -> AnswerRecord:
    watch = Stopwatch()
    reply = await rt.pipeline.answer(INSTANCE, item.question, model=model, route="eval")
    text: list[str] = []
    async with contextlib.aclosing(reply.pieces) as pieces:
        async for piece in pieces:
            watch.piece()
            text.append(piece)
    total = watch.total()
    return AnswerRecord(
        item.id,
        item.question,
        "".join(text),
        [c.key for c in reply.used],
        round(watch.first if watch.first is not None else total, 3),
        round(total, 3),
        reply.model,
    )
