"""Extra query sets over the NegConstraint corpus, built offline, each judged by one passage.

Usage: .venv/bin/python bench/fusion/make_sets.py --beir /work/shared/data/beir/negconstraint \
    --qa /work/shared/data/qa/negconstraint-qa.jsonl --out bench/fusion/sets.json [--n 300]

Sets (passages drawn with a fixed seed; a passage whose sentence occurs in another passage, as
spliced or duplicated passages do, is skipped):
- sentence: one whole inner sentence of the passage (8-40 words), as written. Both modes do
  well; the exact words favour keyword search.
- words: four distinct content words of the passage (4+ letters), shuffled: a terse keyword
  query. Keyword search is strong, vector search weak.
- synonyms: the `sentence` set's sentences with every lower-case content word that WordNet
  knows replaced by another lemma of its most frequent sense (WordNet 3.0 from the Debian
  package wordnet-base, /usr/share/wordnet): vocabulary mismatch, which favours vector search.
  Without WordNet the set is left out.
- typos: the `sentence` set's sentences with one typo (two neighbouring inner letters swapped)
  in each word of 4+ letters, each word with probability 1/2, names included: noisy typing,
  which BM25 (whole-token matching) cannot forgive and sub-word embeddings partly can.
- nonames: the `sentence` set's sentences without their names and numbers (words written with
  a capital or a digit, but the first word), as one asks about something without naming it.
- paraphrase: the `nonames` queries with the `synonyms` substitution: no names and other words.
- negconstraint+synonyms: the folder's own judged queries with the `synonyms` substitution
  (natural questions, vocabulary mismatch).
- qa: the answerable questions of the shared QA set (paraphrased questions; judged: the passage
  holding the answer). Only 18 queries, reported, not used to choose.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rag_service.evaluation.beir import load_beir
from rag_service.providers.stopwords import ENGLISH

SEED = 17
WORDNET = Path("/usr/share/wordnet")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z]+")


def inner_sentences(text: str) -> list[str]:
    """Whole sentences: not the first or last piece (passages start and end mid-sentence)."""
    parts = _SENT.split(text)
    return [s for s in parts[1:-1] if s.endswith((".", "!", "?")) and 8 <= len(s.split()) <= 40]


class WordNet:
    """Most-frequent-sense synonyms from WordNet's index.* and data.* files."""

    POS = ("noun", "verb", "adj", "adv")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index: dict[
            str, list[tuple[int, str, int]]
        ] = {}  # lemma -> (tagged senses, pos, offset)
        for pos in self.POS:
            for line in (root / f"index.{pos}").read_text(encoding="latin-1").splitlines():
                if line.startswith(" "):
                    continue
                f = line.split()
                p_cnt = int(f[3])
                tagged = int(f[5 + p_cnt])
                offsets = f[6 + p_cnt :]
                self.index.setdefault(f[0], []).append((tagged, pos, int(offsets[0])))
        self.data = {pos: (root / f"data.{pos}").read_bytes() for pos in self.POS}

    def lemmas(self, pos: str, offset: int) -> list[str]:
        data = self.data[pos]
        line = data[offset : data.index(b"\n", offset)].decode("latin-1").split()
        count = int(line[3], 16)
        return [line[4 + 2 * i] for i in range(count)]

    def base(self, word: str) -> str | None:
        """The word's WordNet lemma: as is, or without a plural or tense ending."""
        cands = [word]
        for end, repl in (
            ("s", ""),
            ("es", ""),
            ("ed", ""),
            ("ed", "e"),
            ("ing", ""),
            ("ing", "e"),
        ):
            if word.endswith(end):
                cands.append(word[: -len(end)] + repl)
        return next((c for c in cands if len(c) >= 3 and c in self.index), None)

    def synonym(self, word: str) -> str | None:
        base = self.base(word)
        if base is None:
            return None
        _, pos, offset = max(self.index[base], key=lambda e: e[0])
        for lemma in self.lemmas(pos, offset):
            lemma = re.sub(r"\(.*\)$", "", lemma).lower()
            if lemma != base and "_" not in lemma and lemma.isalpha() and lemma != word:
                return lemma
        return None


def with_typos(sentence: str, rng: random.Random) -> str:
    def sub(m: re.Match[str]) -> str:
        w = m.group(0)
        if len(w) < 4 or rng.random() >= 0.5:
            return w
        i = rng.randrange(1, len(w) - 2)  # inner letters: the first and last stay
        return w[:i] + w[i + 1] + w[i] + w[i + 2 :]

    return _WORD.sub(sub, sentence)


def without_names(sentence: str) -> str:
    words = sentence.split()
    kept = words[:1] + [w for w in words[1:] if not re.search(r"^\W*[A-Z]|\d", w)]
    return " ".join(kept)


def with_synonyms(sentence: str, wn: WordNet) -> str:
    def sub(m: re.Match[str]) -> str:
        w = m.group(0)
        if w[0].isupper() or len(w) < 4 or w in ENGLISH:
            return w
        return wn.synonym(w) or w

    return _WORD.sub(sub, sentence)


def main(args: argparse.Namespace) -> None:
    beir = load_beir(args.beir)
    rng = random.Random(SEED)
    docs = sorted(beir.corpus.values(), key=lambda d: d.id)
    texts = [d.text for d in docs]
    order = list(range(len(docs)))
    rng.shuffle(order)
    sentence: dict[str, str] = {}
    words: dict[str, str] = {}
    judged: dict[str, dict[str, int]] = {}
    for i in order:
        if len(sentence) >= args.n:
            break
        doc = docs[i]
        candidates = [s for s in inner_sentences(doc.text) if sum(s in t for t in texts) == 1]
        content = sorted({w.lower() for w in _WORD.findall(doc.text) if len(w) >= 4} - ENGLISH)
        if not candidates or len(content) < 8:
            continue
        qid = f"p{doc.id}"
        sentence[qid] = rng.choice(candidates)
        words[qid] = " ".join(rng.sample(content, 4))
        judged[qid] = {doc.id: 1}
    sets: dict[str, Any] = {
        "sentence": {"queries": sentence, "qrels": judged},
        "words": {"queries": words, "qrels": judged},
    }
    typo_rng = random.Random(SEED + 1)
    sets["typos"] = {
        "queries": {q: with_typos(s, typo_rng) for q, s in sentence.items()},
        "qrels": judged,
    }
    if WORDNET.is_dir():
        wn = WordNet(WORDNET)
        sets["synonyms"] = {
            "queries": {q: with_synonyms(s, wn) for q, s in sentence.items()},
            "qrels": judged,
        }
        nonames = {q: without_names(s) for q, s in sentence.items()}
        sets["nonames"] = {"queries": nonames, "qrels": judged}
        sets["paraphrase"] = {
            "queries": {q: with_synonyms(s, wn) for q, s in nonames.items()},
            "qrels": judged,
        }
        sets[f"{args.beir.name}+synonyms"] = {
            "queries": {q: with_synonyms(t, wn) for q, t in beir.queries.items()},
            "qrels": beir.qrels,
        }
    if args.qa:
        items = [json.loads(line) for line in args.qa.read_text().splitlines() if line.strip()]
        qa = [i for i in items if i.get("answerable") and i.get("doc_id")]
        sets["qa"] = {
            "queries": {i["id"]: i["question"] for i in qa},
            "qrels": {i["id"]: {i["doc_id"]: 1} for i in qa},
        }
    args.out.write_text(json.dumps(sets, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, s in sets.items():
        print(name, len(s["queries"]), next(iter(s["queries"].values())))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--beir", type=Path, required=True)
    p.add_argument("--qa", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=300)
    main(p.parse_args())
