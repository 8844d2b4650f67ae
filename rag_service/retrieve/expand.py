"""Context expansion: each retrieved chunk gains its neighbours' text from the same item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rag_service.providers.protocols import VectorIndex
from rag_service.retrieve.search import ScoredChunk


def _position(chunk_id: str) -> tuple[str, int] | None:
    item, _, n = chunk_id.rpartition(":")
    return (item, int(n)) if item and n.isdigit() else None


async def expand_context(
    index: VectorIndex, chunks: Sequence[ScoredChunk], neighbours: int
) -> list[ScoredChunk]:
    """Chunk ids are `<item-id>:<n>`: read up to `neighbours` chunks either side of each hit and
    join their text around it, in document order. Scores and ids are unchanged."""
    if neighbours <= 0 or not chunks:
        return list(chunks)
    wanted: set[str] = set()
    for c in chunks:
        pos = _position(c.id)
        if pos:
            item, n = pos
            wanted.update(
                f"{item}:{k}" for k in range(n - neighbours, n + neighbours + 1) if k >= 0
            )
    found = {m.id: str(m.metadata.get("text", "")) for m in await index.get(sorted(wanted))}
    out = []
    for c in chunks:
        pos = _position(c.id)
        if pos is None:
            out.append(c)
            continue
        item, n = pos
        texts = [
            c.text if k == n else found.get(f"{item}:{k}", "")
            for k in range(n - neighbours, n + neighbours + 1)
        ]
        out.append(replace(c, text="\n".join(t for t in texts if t)))
    return out
