"""Approximate nearest neighbours for a large `LocalIndex`: an HNSW graph (usearch).

The graph is keyed by the chunk's SQLite rowid and lives in `ann.usearch` beside the SQLite file,
with `ann.json` naming the version of the data it holds: the SQLite file's `uid` and its
`generation` (a count of write transactions). A graph whose version, size, dimensions or settings
differ from the SQLite file's is stale and rebuilt. Vectors are stored as 8-bit integers (a quarter
of the float32 matrix); the candidates it finds are rescored exactly from the matrix, so scores
stay exact. usearch comes with the `local` extra; without it a graph cannot be made (ImportError)
and `LocalIndex` searches exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from usearch.index import Index

ANN_FILE = "ann.usearch"
ANN_META = "ann.json"
FORMAT = 1
# Settings measured at 1M x 384 (bench/README.md, "Index latency").
DTYPE = "i8"
CONNECTIVITY = 32  # links per node (64 on the base layer)
EXPANSION_ADD = 128  # candidate list while linking a new node
EXPANSION_SEARCH = 256  # candidate list while searching (at least the count asked for)
FETCH_PER_K = 4  # candidates for a top-k, all rescored exactly: max(EXPANSION_SEARCH, 4 k)
FILTERED_MIN = 40  # with a filter: candidates that must pass it, max(FILTERED_MIN, 4 k)

IntArray = npt.NDArray[np.int64]
FloatMatrix = npt.NDArray[np.float32]


def _settings(dim: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "dimensions": dim,
        "dtype": DTYPE,
        "connectivity": CONNECTIVITY,
        "expansion_add": EXPANSION_ADD,
    }


def fetch_count(k: int) -> int:
    """Candidates to ask the graph for when `k` results are wanted."""
    return max(EXPANSION_SEARCH, FETCH_PER_K * k)


def passing_count(k: int) -> int:
    """Candidates passing a filter to rescore when `k` results are wanted (the search list is
    still at least EXPANSION_SEARCH long)."""
    return max(FILTERED_MIN, FETCH_PER_K * k)


class Hnsw:
    """An HNSW graph over unit vectors (inner product), keyed by int64 rowids >= 0."""

    def __init__(self, dim: int) -> None:
        from usearch.index import Index  # the `local` extra

        self.dim = dim
        self.churn = 0  # vectors removed or replaced since the graph was built
        self._index: Index = Index(
            ndim=dim,
            metric="ip",
            dtype=DTYPE,
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )

    def __len__(self) -> int:
        return len(self._index)

    @property
    def memory_bytes(self) -> int:
        return int(self._index.memory_usage)

    def keys(self) -> IntArray:
        return np.asarray(self._index.keys).astype(np.int64)

    def contains(self, keys: IntArray) -> npt.NDArray[np.bool_]:
        if not len(keys):
            return np.zeros(0, bool)
        return np.asarray(self._index.contains(keys.astype(np.uint64)), bool)

    def add(self, keys: IntArray, vectors: FloatMatrix, threads: int = 0) -> None:
        """Add vectors under new keys (`threads` 0: every core)."""
        if len(keys):
            self._index.add(keys.astype(np.uint64), vectors, threads=threads)

    def remove(self, keys: IntArray) -> None:
        """Drop the keys that are present; others are ignored. A removed vector stays in the
        graph as a waypoint, and its slot is reused, so the graph slowly loses quality."""
        if len(keys):
            self.churn += int(np.sum(self._index.remove(keys.astype(np.uint64))))

    def replace(self, keys: IntArray, vectors: FloatMatrix, threads: int = 0) -> None:
        """Set the vectors of `keys`, present or not."""
        self.remove(keys)
        self.add(keys, vectors, threads)

    def search(self, query: FloatMatrix, count: int) -> IntArray:
        """Keys of about the `count` nearest vectors, nearest first."""
        count = min(count, len(self))
        if count < 1:
            return np.zeros(0, np.int64)
        found = self._index.search(query, count, threads=1)
        return np.asarray(found.keys).astype(np.int64)

    def save(self, folder: Path, generation: tuple[str, int]) -> None:
        """Write the graph and the generation it holds; each file replaced atomically (the
        graph first, so the metadata never names a generation the graph does not hold)."""
        tag = f".{os.getpid()}.tmp"
        graph, meta = folder / ANN_FILE, folder / ANN_META
        self._index.save(str(graph) + tag)
        os.replace(str(graph) + tag, graph)
        body = {
            **_settings(self.dim),
            "generation": list(generation),
            "count": len(self),
            "churn": self.churn,
        }
        Path(str(meta) + tag).write_text(json.dumps(body) + "\n")
        os.replace(str(meta) + tag, meta)

    @classmethod
    def load(cls, folder: Path, dim: int, generation: tuple[str, int], count: int) -> Hnsw | None:
        """The saved graph if it holds exactly `generation` (with `count` vectors) under the
        current settings; None when missing, stale or unreadable."""
        try:
            meta = json.loads((folder / ANN_META).read_text())
        except (OSError, ValueError):
            return None
        want = {**_settings(dim), "generation": list(generation), "count": count}
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
            return None
        graph = cls(dim)
        try:
            graph._index.load(str(folder / ANN_FILE))
        except (OSError, RuntimeError, ValueError):
            return None
        if graph._index.ndim != dim or len(graph) != count:
            return None
        graph.churn = int(meta.get("churn", 0))
        return graph
