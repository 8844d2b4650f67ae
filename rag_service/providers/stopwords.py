"""English stopwords left out of word-level keyword queries (as the BM25 reference does):
matching "how", "do" or "a" ranks every chunk and buries the ones that answer."""

from __future__ import annotations

_WORDS = """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing don down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    s t
"""
ENGLISH = frozenset(_WORDS.split())


def content_words(words: list[str]) -> list[str]:
    """`words` without stopwords; all of them when nothing else is left."""
    kept = [w for w in words if w.casefold() not in ENGLISH]
    return kept or words
