"""The similarity cache (AI Search's `cache`): an answer is reused for a later prompt worded
nearly the same, within the cache TTL, while the chunks it was grounded on are unchanged.

As AI Search documents it: prompts are split into overlapping word shingles, MinHash
fingerprints go into LSH buckets to find candidates, and a candidate is reused when it is
similar enough for the chosen level. Here the last step is the exact Jaccard similarity of the
two shingle sets, so a level means one number. Entries live in the metadata database (read by
every API process, invalidated by the sync), and each holds the answer, the chunks behind it
and its creation time.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Literal

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rag_service.models import CacheBucket, CacheEntry, CacheItem
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
Sessions = async_sessionmaker[AsyncSession]

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


class AnswerCache:
    """One instance's entries, in the metadata database (every API process shares them)."""

    def __init__(self, sessions: Sessions, instance_id: str, ttl: float = DEFAULT_TTL) -> None:
        self.sessions, self.instance_id, self.ttl = sessions, instance_id, ttl

    async def lookup(
        self, scope: str, prompt: str, threshold: CacheThreshold, now: float | None = None
    ) -> CachedAnswer | None:
        """The most similar live entry of `scope` at or above the level, newest on ties."""
        wanted = shingles(prompt)
        keys = band_keys(scope, minhash(wanted))
        oldest = (time.time() if now is None else now) - self.ttl
        candidates = select(CacheBucket.entry).where(CacheBucket.key.in_(keys))
        query = (
            select(CacheEntry)
            .where(
                CacheEntry.instance_id == self.instance_id,
                CacheEntry.scope == scope,
                CacheEntry.created >= oldest,
                CacheEntry.id.in_(candidates),
            )
            .order_by(CacheEntry.created.desc())
        )
        async with self.sessions() as session:
            rows = list(await session.scalars(query))
        needed = THRESHOLDS[threshold]
        best: CachedAnswer | None = None
        for row in rows:
            similarity = jaccard(wanted, shingles(row.prompt))
            if similarity >= needed and (best is None or similarity > best.similarity):
                best = CachedAnswer(
                    row.id,
                    row.prompt,
                    row.model,
                    row.answer,
                    [ScoredChunk(**c) for c in row.chunks],
                    dict(row.digests),
                    row.created,
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
        created = time.time() if now is None else now
        keys = band_keys(scope, minhash(shingles(prompt)))
        entry = CacheEntry(
            instance_id=self.instance_id,
            scope=scope,
            prompt=prompt,
            model=model,
            answer=answer,
            chunks=json.loads(json.dumps([asdict(c) for c in chunks], default=str)),
            digests={c.id: text_digest(c.text) for c in chunks},
            created=created,
        )
        async with self.sessions() as session, session.begin():
            await session.execute(
                delete(CacheEntry).where(
                    CacheEntry.instance_id == self.instance_id,
                    CacheEntry.created < created - self.ttl,
                )
            )
            session.add(entry)
            await session.flush()
            session.add_all(CacheBucket(key=k, entry=entry.id) for k in dict.fromkeys(keys))
            items = dict.fromkeys(c.item_id for c in chunks)
            session.add_all(CacheItem(item=i, entry=entry.id) for i in items)

    async def drop(self, entry_id: int) -> None:
        await self._delete(CacheEntry.id == entry_id)

    async def purge(self) -> int:
        """Drop every entry; how many there were."""
        return await self._delete(CacheEntry.instance_id == self.instance_id)

    async def invalidate_items(self, item_ids: Sequence[str]) -> int:
        """Drop every entry grounded on a chunk of these items; how many were dropped."""
        ids = list(dict.fromkeys(item_ids))
        dropped = 0
        for start in range(0, len(ids), 500):
            grounded = select(CacheItem.entry).where(CacheItem.item.in_(ids[start : start + 500]))
            dropped += await self._delete(
                CacheEntry.instance_id == self.instance_id, CacheEntry.id.in_(grounded)
            )
        return dropped

    async def _delete(self, *where: ColumnElement[bool]) -> int:
        async with self.sessions() as session, session.begin():
            done = await session.execute(delete(CacheEntry).where(*where))
        return int(getattr(done, "rowcount", 0) or 0)


async def chunks_unchanged(index: VectorIndex, cached: CachedAnswer) -> bool:
    """Whether every chunk behind a cached answer is still in the index with the same text."""
    if not cached.digests:
        return True
    found = {m.id: str(m.metadata.get("text", "")) for m in await index.get(list(cached.digests))}
    return all(
        i in found and text_digest(found[i]) == digest for i, digest in cached.digests.items()
    )
