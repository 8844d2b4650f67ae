"""Exclusions in a question ("... but don't mention Moses", "excluding the trial") are left out of
the retrieval query: embeddings and BM25 do not read negation, so the excluded words pull in the
very passages the user ruled out. The answer model still reads the whole question.

Cues (English): do not / don't / without + mention, include, discuss, cover, talk about, bring
up, refer to, focus on or describe; bare without, excluding, exclude, except for, ", except"
(bare "except" only after a comma: "try except" stays), other than, apart from, aside from, not
including, leaving out, ignoring, omitting, but not. An excluded part runs from its cue to the
end of the sentence or bracket (. ? ! ; brackets) or to a comma before the next question or
clause (", what", ", and how"). A question that is nothing but exclusions is searched as it is."""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERB = (
    r"(?:mention(?:ing)?|includ(?:e|ing)|discuss(?:ing)?|cover(?:ing)?|talk(?:ing)?\s+about"
    r"|bring(?:ing)?\s+up|refer(?:ring)?\s+to|focus(?:ing)?\s+on|describ(?:e|ing))"
)
_CUE = re.compile(
    r"(?:,?\s*\b(?:but|and)\s+)?\b(?:"
    rf"(?:please\s+)?(?:do\s+not|don['\u2019]?t|without)\s+{_VERB}"
    r"|without|excluding|exclude|except\s+for|other\s+than|apart\s+from|aside\s+from"
    r"|not\s+including|leaving\s+out|ignoring|omitting|but\s+not"
    r")\b|,\s*except\b",
    re.IGNORECASE,
)
_END = re.compile(
    r"[.?!;()\[\]\n]|,\s*(?=(?:and\s+|but\s+|so\s+)?(?:what|how|why|when|where|which|who|whose"
    r"|is|are|does|do|did|can|could|should|would|will|please|also|then)\b)",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class Exclusions:
    positive: str  # what to retrieve with
    excluded: tuple[str, ...] = ()  # the parts left out, without their cues


def split_exclusions(question: str) -> Exclusions:
    """The question without its excluded parts, and those parts."""
    kept: list[str] = []
    excluded: list[str] = []
    pos = 0
    for cue in _CUE.finditer(question):
        if cue.start() < pos:
            continue
        end = _END.search(question, cue.end())
        stop = end.start() if end else len(question)
        part = question[cue.end() : stop].strip(" ,")
        if not _WORD.search(part):
            continue
        kept.append(question[pos : cue.start()])
        excluded.append(part)
        pos = stop
    if not excluded:
        return Exclusions(question)
    kept.append(question[pos:])
    positive = _tidy("".join(kept))
    if not _WORD.search(positive):
        return Exclusions(question)
    return Exclusions(positive, tuple(excluded))


def _tidy(text: str) -> str:
    """Whitespace and punctuation left behind by the cut parts."""
    text = re.sub(r"\(\s*\)|\[\s*\]", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"(?:\s*,)+", ",", text)
    text = re.sub(r"\s+([,.?!;:)\]])", r"\1", text)
    text = re.sub(r",+(?=[.?!;:]|$)", "", text)
    text = re.sub(r"([.?!;:(\[]),+", r"\1", text)
    return text.strip(" ,")
