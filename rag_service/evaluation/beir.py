"""A BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from rag_service.errors import InvalidRequest

Qrels = dict[str, dict[str, int]]
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True)
class BeirDoc:
    id: str
    title: str
    text: str

    @property
    def body(self) -> str:
        """What gets indexed: title, a blank line, text (the text alone when untitled)."""
        return f"{self.title}\n\n{self.text}" if self.title else self.text

    @property
    def filename(self) -> str:
        """A file name that maps back to exactly this id."""
        name = self.id if _SAFE_ID.match(self.id) else quote(self.id, safe="")
        return f"{name}.txt"


@dataclass(frozen=True)
class BeirSet:
    corpus: dict[str, BeirDoc]
    queries: dict[str, str]  # only the judged ones
    qrels: Qrels  # query id -> doc id -> relevance (> 0: relevant)


def _jsonl(path: Path) -> Iterator[dict[str, str]]:
    if not path.is_file():
        raise InvalidRequest(f"BEIR folder is missing {path.name}: {path}")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"{path}:{n}: not JSON ({exc.msg})") from None
                yield row


def load_qrels(path: Path) -> Qrels:
    """Tab-separated query-id, corpus-id, score with a header row; zero scores are kept."""
    if not path.is_file():
        raise InvalidRequest(f"BEIR folder is missing qrels/{path.name}: {path}")
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        for n, row in enumerate(rows, 1):
            if n == 1 and row and row[0] == "query-id":
                continue
            try:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
            except (IndexError, ValueError):
                raise InvalidRequest(
                    f"{path}:{n}: expected query-id, corpus-id, score (a number)"
                ) from None
    return qrels


def load_beir(folder: Path, split: str = "test") -> BeirSet:
    """The corpus and the queries judged in `split`, checked for dangling references."""
    corpus = {
        str(r["_id"]): BeirDoc(str(r["_id"]), r.get("title") or "", r.get("text") or "")
        for r in _jsonl(folder / "corpus.jsonl")
    }
    texts = {str(r["_id"]): r.get("text") or "" for r in _jsonl(folder / "queries.jsonl")}
    qrels = load_qrels(folder / "qrels" / f"{split}.tsv")
    missing = sorted(q for q in qrels if q not in texts)
    if missing:
        raise InvalidRequest(f"qrels name {len(missing)} unknown queries, e.g. {missing[0]!r}")
    return BeirSet(corpus, {q: texts[q] for q in qrels}, qrels)


def write_corpus(beir: BeirSet, folder: Path) -> dict[str, str]:
    """One text file per document; returns file name -> document id. A file that already
    holds its text is left alone (a kept folder is synced again without re-indexing)."""
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for doc in beir.corpus.values():
        path = folder / doc.filename
        if not path.is_file() or path.read_text(encoding="utf-8") != doc.body:
            path.write_text(doc.body, encoding="utf-8")
        names[doc.filename] = doc.id
    return names
