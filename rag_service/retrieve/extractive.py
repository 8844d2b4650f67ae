"""The extractive answerer: the sentences of the best chunks that answer the question, each with
its file name, or an honest "not found". No language model: it cannot invent or loop.

A sentence is scored by the embedding model (question vs sentence) and by how many of the
question's content words it holds. The question's kind says what an answer must contain that
the question does not (a year for "when", a number for "how many", a name for "who"); the best
sentence without it is passed over, and none at all means the documents do not say."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import numpy as np

from rag_service.providers.protocols import Embedder
from rag_service.providers.stopwords import content_words
from rag_service.retrieve.generate import NOT_FOUND_ANSWER
from rag_service.retrieve.search import ScoredChunk

EXTRACTIVE_MODEL = "extractive"
CHUNKS_READ = 5  # the best chunks whose sentences compete
MAX_SENTENCES = 2
MIN_WORDS, MAX_WORDS = 4, 120
SIMILARITY_FLOOR = 0.25  # below it a sentence is about something else
OVERLAP_FLOOR = 0.25  # an answer names a quarter of what the question asks about, or more
# ... and one that names less than half of it must be close in meaning to the question.
CLOSE_OVERLAP, CLOSE_SIMILARITY = 0.5, 0.4
RUNNER_UP = 0.9  # a second sentence joins when it scores this close to the best

_PARAGRAPH = re.compile(r"\n\s*\n")
_FOLLOWER = re.compile(r"(It|He|She|They|This|These|Its|His|Her|Their|There)\b")
_RECORD = re.compile(r"^\s*[^:,.]{1,60}: [^\n]*, [^:,.]{1,60}: ")
_SPLIT = re.compile(r"(?<=[.!?;])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"\w+", re.UNICODE)
_YEAR = re.compile(r"\b\d{1,4} ?(BC|BCE|AD|CE)\b|\b(AD|CE) ?\d{1,4}\b|\b[1-9]\d{2,3}\b")
_TIME = re.compile(
    r"\b(1[0-9]{3}|20[0-9]{2})\b|\b\d{1,2}[:.]\d{2}\b|\b\d+ ?(am|pm)\b|\b\d+(st|nd|rd|th)\b"
    r"|\b(january|february|march|april|may|june|july|august|september|october|november"
    r"|december|monday|tuesday|wednesday|thursday|friday|saturday|sunday|spring|summer"
    r"|autumn|winter|morning|evening|night|noon|midnight|century|centuries|closed)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(
    r"\d+|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|"
    r"thirty|forty|fifty|hundreds?|thousands?|millions?|billions?|half|dozens?|a few)\b",
    re.IGNORECASE,
)
# A name: two or more capitalised words (particles and initials allowed), not opening a sentence.
_NAME = re.compile(
    r"(?<!^)(?<![.!?]\s)\b[A-Z][\w'-]+(?:\s+(?:(?:de|da|di|del|van|von|der|la|le|al|bin|ibn)\s+)?"
    r"(?:[A-Z]\.\s*)*[A-Z][\w'-]+)+"
)


@dataclass(frozen=True)
class Sentence:
    text: str
    key: str
    rank: int  # of its chunk
    similarity: float = 0.0
    overlap: float = 0.0

    @property
    def score(self) -> float:
        return 0.6 * self.similarity + 0.4 * self.overlap - 0.01 * self.rank


def sentences(text: str) -> list[str]:
    """The sentences of a chunk's paragraphs (hard-wrapped lines joined), without headings
    (short lines with no full stop) and without the very short or very long ones."""
    found = []
    for paragraph in _paragraphs(text):
        for part in _SPLIT.split(paragraph):
            if MIN_WORDS <= len(part.split()) <= MAX_WORDS and not _heading(part):
                found.append(part)
    return found


def with_followers(found: list[str]) -> list[str]:
    """Each sentence, and each joined with the next one when that one goes on about it ("It
    was established in 1997." says when only after the sentence that names what)."""
    out = list(found)
    for first, then in itertools.pairwise(found):
        if _FOLLOWER.match(then):
            out.append(f"{first} {then}")
    return out


def _heading(line: str) -> bool:
    return len(line.split()) < 8 and not line.rstrip("\"')]").endswith((".", "!", "?", ";", ":"))


def _paragraphs(text: str) -> list[str]:
    """Paragraphs with their hard-wrapped lines joined; a heading line ends one."""
    paragraphs: list[str] = []
    for block in _PARAGRAPH.split(text):
        lines: list[str] = []
        for line in block.splitlines():
            if _heading(line.strip()) or _RECORD.match(line):
                paragraphs.append(" ".join(lines))
                lines = []
                if _RECORD.match(line):  # a table row ("name: value, name: value"): its own
                    paragraphs.append(line.strip())
            else:
                lines.append(line.strip())
        paragraphs.append(" ".join(lines))
    return [p for p in paragraphs if p]


def _stems(words: Sequence[str]) -> set[str]:
    """Lower-cased words cut to 5 letters: 'found'/'founded', 'student'/'students' meet."""
    return {w.lower()[:5] for w in words}


_PERSON_NOUNS = (
    "actor|actress|person|man|woman|author|writer|poet|singer|artist|painter|player|king|queen|"
    "president|scientist|composer|director|architect|founder|leader|emperor|ruler|captain"
)
_MEASURE = (
    r"\bhow (much|long|old|tall|high|far|big|hot|cold|warm|often|fast|deep|heavy)\b"
    r"|\bwhat (percentage|number|temperature|size|amount)\b"
)
# What kind of question, by the first of these cues it holds (a later "when" in a clause
# does not make "how many ... when ..." a question about time).
_CUES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(what|which) year\b"), "year"),
    (re.compile(r"\bhow many (\w+)"), "count"),
    (
        re.compile(
            r"\bhow (much|long|old|tall|high|far|big|hot|cold|warm|often|fast|deep|heavy)\b"
            r"|\bwhat (percentage|number|temperature|size|amount)\b"
        ),
        "number",
    ),
    (re.compile(r"\bwhen\b|\bwhat time\b"), "time"),
    (re.compile(rf"\b(who|whom|whose)\b|\b(which|what) ({_PERSON_NOUNS})\b"), "name"),
)


def wanted(question: str) -> re.Pattern[str] | None:
    """What an answer to this kind of question must hold beyond the question's own words."""
    q = question.lower()
    found = [(m.start(), kind, m) for cue, kind in _CUES if (m := cue.search(q))]
    if not found:
        return None
    _, kind, match = min(found, key=lambda f: f[0])
    if kind == "count":  # "how many moons": a number counting moons, not any number
        noun = re.escape(match.group(1)[:4])
        return re.compile(rf"(?:{_NUMBER.pattern})\W+(?:\w+\W+){{0,2}}{noun}", re.IGNORECASE)
    return {"year": _YEAR, "number": _NUMBER, "time": _TIME, "name": _NAME}[kind]


def answers_kind(sentence: str, question: str, kind: re.Pattern[str] | None) -> bool:
    """Whether the sentence holds something of the wanted kind that the question does not."""
    if kind is None:
        return True
    asked = {w.lower() for w in _WORD.findall(question)}
    return any(
        any(w.lower() not in asked for w in _WORD.findall(m.group(0)))
        for m in kind.finditer(sentence)
    )


async def choose(
    embedder: Embedder, question: str, chunks: Sequence[ScoredChunk]
) -> list[Sentence]:
    """The answering sentences, best first; empty when the documents do not answer."""
    pool = [
        Sentence(text, c.key, rank)
        for rank, c in enumerate(chunks[:CHUNKS_READ])
        for text in with_followers(sentences(c.text))
    ]
    if not pool:
        return []
    asked = _stems(content_words(_WORD.findall(question))) or _stems(_WORD.findall(question))
    query = await embedder.embed_query(question)
    vectors = await embedder.embed_documents([s.text for s in pool])
    similarity = np.asarray(vectors @ query, dtype=np.float64)
    kind = wanted(question)
    scored = sorted(
        (
            Sentence(
                s.text,
                s.key,
                s.rank,
                float(sim),
                len(asked & _stems(_WORD.findall(s.text))) / max(len(asked), 1),
            )
            for s, sim in zip(pool, similarity, strict=True)
        ),
        key=lambda s: -s.score,
    )
    fitting = [
        s
        for s in scored
        if s.similarity >= SIMILARITY_FLOOR
        and s.overlap >= OVERLAP_FLOOR
        and (s.overlap >= CLOSE_OVERLAP or s.similarity >= CLOSE_SIMILARITY)
        and answers_kind(s.text, question, kind)
    ]
    if not fitting:
        return []
    best = fitting[0]
    chosen = [best]
    for s in fitting[1:]:
        if len(chosen) == MAX_SENTENCES or s.score < RUNNER_UP * best.score:
            break
        if not any(s.text in c.text or c.text in s.text for c in chosen):
            chosen.append(s)
    return chosen


async def extractive_answer(
    embedder: Embedder, question: str, chunks: Sequence[ScoredChunk]
) -> AsyncGenerator[str, None]:
    """The chosen sentences, each followed by its file in brackets, streamed word by word."""
    chosen = await choose(embedder, question, chunks)
    if not chosen:
        yield NOT_FOUND_ANSWER
        return
    text = " ".join(f"{s.text} [{s.key}]" for s in chosen)
    for word in re.findall(r"\s*\S+", text):  # a word at a time, as a model would stream
        yield word
