"""The similarity cache (AI Search's `cache`): an answer is reused for a later prompt worded
nearly the same, within the cache TTL, while the chunks it was grounded on are unchanged.

As AI Search documents it: prompts are split into overlapping word shingles, MinHash
fingerprints go into LSH buckets to find candidates, and a candidate is reused when it is
similar enough for the chosen level. Here the last step is the exact Jaccard similarity of the
two shingle sets, so a level means one number. Entries live per instance in a SQLite file in
its data dir (read by the API, invalidated by the sync, possibly another process), and each
holds the answer, the chunks behind it and its creation time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from rag_service.providers.protocols import VectorIndex
from rag_service.retrieve.search import ScoredChunk

CacheThreshold = Literal["super_strict_match", "close_enough", "flexible_friend", "anything_goes"]
# Jaccard similarity of the two prompts' shingle sets needed to reuse an answer.
THRESHOLDS: Mapping[CacheThreshold, float] = {
    "super_strict_match": 0.9,
    "close_enough": 0.8,
    "flexible_friend": 0.6,
    "anything_goes": 0.4,
}
DEFAULT_TTL = 48 * 3600  # AI Search's default cache_ttl (600 s .. 6 days)
CACHE_FILE = "answer-cache.sqlite"

# 64 bands of 2 rows: a prompt at Jaccard 0.4 shares a band with probability 0.99998, at 0.2
# 0.93; LSH only proposes candidates, the exact similarity decides.
BANDS, ROWS = 64, 2
_PRIME = (1 << 61) - 1
_RNG = random.Random(20250101)
_PERMS = [(_RNG.randrange(1, _PRIME), _RNG.randrange(0, _PRIME)) for _ in range(BANDS * ROWS)]
_CONTRACTIONS = (
    ("can't", "can not"),
    ("won't", "will not"),
    ("n't", " not"),
    ("'s", " is"),
    ("'re", " are"),
    ("'m", " am"),
    ("'ll", " will"),
    ("'ve", " have"),
    ("'d", " would"),
)
_WORD = re.compile(r"\w+")


def shingles(text: str) -> frozenset[str]:
    """Words and two-word shingles of the casefolded text, contractions spelled out."""
    t = text.casefold().replace("\u2019", "'")
    for short, full in _CONTRACTIONS:
        t = t.replace(short, full)
    words = _WORD.findall(t)
    return frozenset(words) | {f"{a} {b}" for a, b in pairwise(words)}


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def minhash(shingle_set: frozenset[str]) -> list[int]:
    """One minimum per hash permutation (a*h + b mod 2^61-1) over the shingles' hashes."""
    hashes = [_hash64(s) for s in shingle_set] or [0]
    return [min((a * h + b) % _PRIME for h in hashes) for a, b in _PERMS]


def band_keys(scope: str, signature: Sequence[int]) -> list[int]:
    """The LSH bucket of each band, within one scope, as signed 64-bit SQLite integers."""
    keys = []
    for band in range(BANDS):
        rows = signature[band * ROWS : (band + 1) * ROWS]
        digest = hashlib.blake2b(f"{scope}|{band}|{rows}".encode(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "big", signed=True))
    return keys


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CachedAnswer:
    entry_id: int
    prompt: str
    model: str  # the model that wrote the answer
    answer: str
    chunks: list[ScoredChunk]
    digests: dict[str, str]  # chunk id -> digest of the text it had
    created: float
    similarity: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, scope TEXT NOT NULL, prompt TEXT NOT NULL, model TEXT NOT NULL,
    answer TEXT NOT NULL, chunks TEXT NOT NULL, digests TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created);
CREATE TABLE IF NOT EXISTS buckets (
    key INTEGER NOT NULL, entry INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS buckets_key ON buckets (key);
CREATE INDEX IF NOT EXISTS buckets_entry ON buckets (entry);
CREATE TABLE IF NOT EXISTS entry_items (
    item TEXT NOT NULL, entry INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS entry_items_item ON entry_items (item);
CREATE INDEX IF NOT EXISTS entry_items_entry ON entry_items (entry);
"""


class AnswerCache:
    """One instance's cache file. Every call opens its own connection in a worker thread."""

    def __init__(self, path: Path, ttl: float = DEFAULT_TTL) -> None:
        self.path, self.ttl = path, ttl

    @classmethod
    def for_instance(cls, instance_dir: Path, ttl: float = DEFAULT_TTL) -> AnswerCache:
        return cls(instance_dir / CACHE_FILE, ttl)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=10)
        try:
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA journal_mode = WAL")
            con.executescript(_SCHEMA)
            with con:
                yield con
        finally:
            con.close()

    async def lookup(
        self, scope: str, prompt: str, threshold: CacheThreshold, now: float | None = None
    ) -> CachedAnswer | None:
        """The most similar live entry of `scope` at or above the level, newest on ties."""
        return await asyncio.to_thread(self._lookup, scope, prompt, THRESHOLDS[threshold], now)

    def _lookup(
        self, scope: str, prompt: str, needed: float, now: float | None
    ) -> CachedAnswer | None:
        wanted = shingles(prompt)
        keys = band_keys(scope, minhash(wanted))
        oldest = (time.time() if now is None else now) - self.ttl
        with self._db() as con:
            rows = con.execute(
                "SELECT id, prompt, model, answer, chunks, digests, created FROM entries "
                "WHERE scope = ? "
                "AND created >= ? AND id IN (SELECT entry FROM buckets WHERE key IN "
                f"({','.join('?' * len(keys))})) ORDER BY created DESC",
                (scope, oldest, *keys),
            ).fetchall()
        best: CachedAnswer | None = None
        for entry_id, text, model, answer, chunks, digests, created in rows:
            similarity = jaccard(wanted, shingles(text))
            if similarity >= needed and (best is None or similarity > best.similarity):
                best = CachedAnswer(
                    entry_id,
                    text,
                    model,
                    answer,
                    [ScoredChunk(**c) for c in json.loads(chunks)],
                    json.loads(digests),
                    created,
                    similarity,
                )
        return best

    async def store(
        self,
        scope: str,
        prompt: str,
        model: str,
        answer: str,
        chunks: Sequence[ScoredChunk],
        now: float | None = None,
    ) -> None:
        """Keep an answer and the chunks behind it; expired entries are dropped on the way."""
        await asyncio.to_thread(self._store, scope, prompt, model, answer, list(chunks), now)

    def _store(
        self,
        scope: str,
        prompt: str,
        model: str,
        answer: str,
        chunks: list[ScoredChunk],
        now: float | None,
    ) -> None:
        created = time.time() if now is None else now
        keys = band_keys(scope, minhash(shingles(prompt)))
        digests = {c.id: text_digest(c.text) for c in chunks}
        with self._db() as con:
            con.execute("DELETE FROM entries WHERE created < ?", (created - self.ttl,))
            cur = con.execute(
                "INSERT INTO entries (scope, prompt, model, answer, chunks, digests, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    scope,
                    prompt,
                    model,
                    answer,
                    json.dumps([asdict(c) for c in chunks], default=str),
                    json.dumps(digests),
                    created,
                ),
            )
            entry = cur.lastrowid
            con.executemany("INSERT INTO buckets VALUES (?, ?)", [(k, entry) for k in keys])
            items = {c.item_id for c in chunks}
            con.executemany("INSERT INTO entry_items VALUES (?, ?)", [(i, entry) for i in items])

    async def drop(self, entry_id: int) -> None:
        await asyncio.to_thread(self._execute, "DELETE FROM entries WHERE id = ?", (entry_id,))

    async def purge(self) -> int:
        """Drop every entry; how many there were."""
        if not self.path.exists():
            return 0
        return await asyncio.to_thread(self._execute, "DELETE FROM entries", ())

    async def invalidate_items(self, item_ids: Sequence[str]) -> int:
        """Drop every entry grounded on a chunk of these items; how many were dropped."""
        if not item_ids or not self.path.exists():
            return 0
        ids = list(dict.fromkeys(item_ids))
        dropped = 0
        for start in range(0, len(ids), 500):
            batch = tuple(ids[start : start + 500])
            sql = (
                "DELETE FROM entries WHERE id IN "
                f"(SELECT entry FROM entry_items WHERE item IN ({','.join('?' * len(batch))}))"
            )
            dropped += await asyncio.to_thread(self._execute, sql, batch)
        return dropped

    def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._db() as con:
            return con.execute(sql, params).rowcount


async def invalidate_items(instance_dir: Path, item_ids: Sequence[str]) -> int:
    """For the sync: drop the cached answers grounded on these (changed or deleted) items."""
    return await AnswerCache.for_instance(instance_dir).invalidate_items(item_ids)


async def chunks_unchanged(index: VectorIndex, cached: CachedAnswer) -> bool:
    """Whether every chunk behind a cached answer is still in the index with the same text."""
    if not cached.digests:
        return True
    found = {m.id: str(m.metadata.get("text", "")) for m in await index.get(list(cached.digests))}
    return all(
        i in found and text_digest(found[i]) == digest for i, digest in cached.digests.items()
    )
