"""Embedded on-disk index: SQLite (WAL + FTS5) for durability, numpy for exact cosine search.

One directory per index holding one SQLite file. `chunks` keeps id, float32 vector and JSON
metadata (with the chunk text under `text`); an external-content FTS5 table over that text is
kept in sync by triggers, so every upsert or delete is one all-or-nothing transaction. At open
all vectors are loaded into a float32 matrix; queries are exact (filter first, then top-k).

From `ann_threshold` vectors on, vector queries go through an HNSW graph (`ann.Hnsw`) kept
beside the SQLite file: its candidates are rescored exactly from the matrix, and a filter keeps
its exact mask (candidates are over-fetched until enough pass, or the query is answered exactly
when the filter admits few rows). The graph is built or loaded in a background thread (queries
stay exact until it is ready), follows every write, and is saved at close; a saved graph whose
generation (a counter of write transactions kept in `meta`) differs from the file's is rebuilt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from rag_service.errors import BackendError, IndexMismatch, InvalidRequest
from rag_service.providers import ann as ann_mod
from rag_service.providers import filters as flt
from rag_service.providers.protocols import Filter, IndexSpec, Match, Vector, VectorRecord
from rag_service.providers.stopwords import content_words

KeywordTokenizer = Literal["porter", "trigram"]
FORMAT_VERSION = "1"
DB_NAME = "index.sqlite3"
_TOKENIZE = {"porter": "porter unicode61", "trigram": "trigram"}
_MAX_TERMS = 64
_SQL_BATCH = 500
_MAX_COLUMNS = 64
_ANN_CHUNK = 4096  # rows copied per lock hold while a graph is built
# rows per add while a graph is built: 4,096-row adds gave recall@10 0.987 at 1M, one add or
# adds of 16,384 or 65,536 rows 0.9985-0.9995 (same vectors and queries; bench/README.md)
_ANN_ADD = 65_536
_ANN_CATCH_UP = 2048  # writes made during a build that are applied while queries wait
_ANN_EXACT_ROWS = 20_000  # a filter admitting at most this many rows is answered exactly
_ANN_MAX_FETCH = 8192  # candidates beyond which a filtered query is answered exactly
_ANN_OVERFETCH = 1.5  # a filter's first fetch: this many times the candidates it should pass
_ANN_REBUILD = 0.25  # the graph is rebuilt once this share of its vectors was removed or replaced
_WORD = re.compile(r"\w+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # never part of a keyword: a NUL ends an FTS5 string
_JSON_KIND = dict(null=flt.NULL, true=flt.BOOL, false=flt.BOOL, integer=flt.NUM, real=flt.NUM)
_JSON_KIND["text"] = flt.STR
_OLD, _NEW = (f"json_extract({r}.metadata, '$.text')" for r in ("old", "new"))
_FTS_DELETE = (
    f"INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.rowid, {_OLD});"
)
_FTS_INSERT = f"INSERT INTO chunks_fts(rowid, text) VALUES (new.rowid, {_NEW});"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL, metadata TEXT NOT NULL);
CREATE VIEW IF NOT EXISTS chunks_text AS
    SELECT rowid, json_extract(metadata, '$.text') AS text FROM chunks;
"""
_FTS_DDL = (
    "CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks_text', "
    "content_rowid='rowid', tokenize='{tokenize}')",
    f"CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN {_FTS_INSERT} END",
    f"CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN {_FTS_DELETE} END",
    f"CREATE TRIGGER chunks_au AFTER UPDATE ON chunks BEGIN {_FTS_DELETE} {_FTS_INSERT} END",
)
_FTS_DROP = [f"DROP TRIGGER chunks_{x}" for x in ("ai", "ad", "au")] + ["DROP TABLE chunks_fts"]

T = TypeVar("T")
IntArray = npt.NDArray[np.int64]
log = logging.getLogger(__name__)


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _init_schema(conn: sqlite3.Connection, spec: IndexSpec, tokenizer: str, where: Path) -> None:
    conn.executescript(_SCHEMA)
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        want = {"model": spec.model, "pooling": spec.pooling, "dimensions": str(spec.dimensions)}
        if not meta:
            meta = {"format": FORMAT_VERSION, **want, "keyword_tokenizer": tokenizer}
            conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            for ddl in _FTS_DDL:
                conn.execute(ddl.format(tokenize=_TOKENIZE[tokenizer]))
        elif meta.get("format") != FORMAT_VERSION:
            raise BackendError(f"index at {where} has unsupported format {meta.get('format')}")
        elif any(meta.get(k) != v for k, v in want.items()):
            have = ", ".join(f"{k}={meta.get(k)}" for k in want)
            asked = ", ".join(f"{k}={v}" for k, v in want.items())
            raise IndexMismatch(f"index at {where} was built for {have}; requested {asked}")
        elif meta.get("keyword_tokenizer") != tokenizer:
            for ddl in (*_FTS_DROP, *_FTS_DDL):
                conn.execute(ddl.format(tokenize=_TOKENIZE[tokenizer]))
            conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'keyword_tokenizer'", (tokenizer,))
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('uid', ?)", (os.urandom(8).hex(),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidRequest(f"top_k must be a positive integer, got {top_k!r}")
    return top_k


def _metadata_json(rid: str, meta: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    for k, v in meta.items():
        ok = v is None or isinstance(v, str | int | float)
        if not isinstance(k, str) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise InvalidRequest(f"chunk {rid!r}: metadata {k!r} must be a finite scalar")
    if not isinstance(meta.get("text", ""), str):
        raise InvalidRequest(f"chunk {rid!r}: metadata 'text' must be a string")
    d = dict(meta)
    return json.dumps(d, ensure_ascii=False), d


class LocalIndex:
    """Exact cosine + BM25 index in one directory; implements `VectorIndex`.

    Open with the sync factory `LocalIndex.open(path, spec)` or `await LocalIndex.aopen(...)`.
    Reopening with another keyword tokenizer rebuilds the keyword index. With `ann_threshold`,
    vector queries over at least that many vectors use an HNSW graph (see the module doc).
    """

    def __init__(
        self,
        path: Path,
        spec: IndexSpec,
        tokenizer: KeywordTokenizer,
        ann_threshold: int | None = None,
    ) -> None:
        self.path, self.spec, self.keyword_tokenizer = path, spec, tokenizer
        self.ann_threshold = ann_threshold
        self._wlock = asyncio.Lock()
        self._wmutex = threading.Lock()
        self._state = threading.Lock()
        self._closed = False
        self._cols: dict[str, flt.Column] = {}
        self._rowsort: tuple[IntArray, IntArray] | None = None
        self._ann: ann_mod.Hnsw | None = None  # in use: follows every write (under _state)
        self._ann_thread: threading.Thread | None = None
        self._ann_stop = self._ann_failed = False
        self._journal: set[int] | None = None  # rowids written while a graph is being built
        self._saved_generation = -1  # generation of the graph file this index wrote or read
        self.ann_stats: dict[str, Any] = {}
        db = path / DB_NAME
        self._conn = _connect(db)
        conns = [self._conn]
        try:
            _init_schema(self._conn, spec, tokenizer, path)
            conns.append(rconn := _connect(db))
            conns.append(lconn := _connect(db))
            self._rconn, self._lconn = rconn, lconn
            self._load()
        except BaseException:
            for c in conns:
                c.close()
            raise
        self._maybe_start_ann()

    @classmethod
    def open(
        cls,
        path: Path,
        spec: IndexSpec,
        keyword_tokenizer: KeywordTokenizer = "porter",
        ann_threshold: int | None = None,
    ) -> LocalIndex:
        """Open or create the index in `path`; IndexMismatch if it was built for another spec.
        `ann_threshold`: vectors from which queries use the HNSW graph (None or 0: never)."""
        if keyword_tokenizer not in _TOKENIZE:
            raise InvalidRequest(f"keyword_tokenizer must be one of {sorted(_TOKENIZE)}")
        if spec.dimensions < 1:
            raise InvalidRequest("index dimensions must be positive")
        path.mkdir(parents=True, exist_ok=True)
        try:
            return cls(path, spec, keyword_tokenizer, ann_threshold or None)
        except sqlite3.Error as e:
            raise BackendError(f"cannot open index at {path}: {e}") from e

    @classmethod
    async def aopen(
        cls,
        path: Path,
        spec: IndexSpec,
        keyword_tokenizer: KeywordTokenizer = "porter",
        ann_threshold: int | None = None,
    ) -> LocalIndex:
        """`open` in a worker thread (loading a big index takes a while)."""
        return await asyncio.to_thread(cls.open, path, spec, keyword_tokenizer, ann_threshold)

    def _load(self) -> None:
        dim = self.spec.dimensions
        (n,) = self._conn.execute("SELECT count(*) FROM chunks").fetchone()
        self._mat = np.zeros((max(16, n), dim), np.float32)
        self._rowids = np.zeros(len(self._mat), np.int64)
        self._ids: list[str] = []
        cur = self._conn.execute("SELECT rowid, id, vector FROM chunks ORDER BY rowid")
        while rows := cur.fetchmany(4096):
            rowids, ids, blobs = zip(*rows, strict=True)
            if any(len(b) != dim * 4 for b in blobs):
                raise BackendError(f"index at {self.path}: a stored vector is corrupt")
            start, end = len(self._ids), len(self._ids) + len(rows)
            self._mat[start:end] = np.frombuffer(b"".join(blobs), np.float32).reshape(-1, dim)
            self._rowids[start:end] = rowids
            self._ids.extend(ids)
        self._n = len(self._ids)
        self._pos = {cid: i for i, cid in enumerate(self._ids)}
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        self._generation, self._uid = int(meta["generation"]), meta["uid"]

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"index at {self.path} is closed")

    def _vectors(self, vecs: Sequence[Any], names: Sequence[str]) -> npt.NDArray[np.float32]:
        dim, out = self.spec.dimensions, np.empty((len(vecs), self.spec.dimensions))
        for i, (v, name) in enumerate(zip(vecs, names, strict=True)):
            try:
                a = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise InvalidRequest(f"{name}: not a numeric vector") from e
            if a.ndim != 1:
                raise InvalidRequest(f"{name}: a vector must be one-dimensional")
            if a.shape[0] != dim:
                raise IndexMismatch(
                    f"{name} has {a.shape[0]} dimensions; index for {self.spec.model} expects {dim}"
                )
            out[i] = a
        norms = np.linalg.norm(out, axis=1)
        bad = ~np.isfinite(norms) | (norms == 0)
        if bad.any():
            name = names[int(np.flatnonzero(bad)[0])]
            raise InvalidRequest(f"{name}: vector must be finite and non-zero")
        unit: npt.NDArray[np.float32] = (out / norms[:, None]).astype(np.float32)
        return unit

    async def upsert(self, records: Sequence[VectorRecord]) -> None:
        async with self._wlock:
            await asyncio.to_thread(self._upsert_sync, records)

    def _upsert_sync(self, records: Sequence[VectorRecord]) -> None:
        latest: dict[str, VectorRecord] = {}
        for r in records:
            if not isinstance(r.id, str) or not r.id:
                raise InvalidRequest("chunk ids must be non-empty strings")
            latest[r.id] = r
        ids = list(latest)
        if not ids:
            return
        vecs = self._vectors([r.values for r in latest.values()], [f"chunk {i!r}" for i in ids])
        metas = [_metadata_json(i, r.metadata) for i, r in latest.items()]
        with self._wmutex:
            self._check_open()
            new: dict[str, int] = {}

            def write(conn: sqlite3.Connection) -> None:
                for cid, vec, (mjson, _) in zip(ids, vecs, metas, strict=True):
                    if cid in self._pos:
                        sql = "UPDATE chunks SET vector = ?, metadata = ? WHERE id = ?"
                        conn.execute(sql, (vec.tobytes(), mjson, cid))
                    else:
                        sql = "INSERT INTO chunks(vector, metadata, id) VALUES (?, ?, ?)"
                        new[cid] = conn.execute(sql, (vec.tobytes(), mjson, cid)).lastrowid or 0

            self._transaction(write, lambda: self._apply_upsert(ids, vecs, metas, new))
            self._maybe_start_ann()

    def _transaction(
        self, write: Callable[[sqlite3.Connection], None], apply: Callable[[], None]
    ) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            write(conn)
            sql = "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
            conn.execute(sql)
            with self._state:
                conn.execute("COMMIT")
                self._generation += 1
                apply()
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise BackendError(f"index write failed: {e}") from e
            raise

    def _apply_upsert(
        self,
        ids: list[str],
        vecs: npt.NDArray[np.float32],
        metas: list[tuple[str, dict[str, Any]]],
        new: dict[str, int],
    ) -> None:
        cap = len(self._mat)
        if self._n + len(new) > cap:
            while self._n + len(new) > cap:
                cap *= 2
            extra = np.zeros((cap - len(self._mat), self.spec.dimensions), np.float32)
            self._mat = np.concatenate([self._mat, extra])
            self._rowids = np.concatenate(
                [self._rowids, np.zeros(cap - len(self._rowids), np.int64)]
            )
            for col in self._cols.values():
                col.grow(cap)
        positions = np.empty(len(ids), np.int64)
        for i, cid in enumerate(ids):
            p = self._pos.get(cid)
            if p is None:
                p = self._n
                self._n += 1
                self._ids.append(cid)
                self._pos[cid] = p
                self._rowids[p] = new[cid]
            positions[i] = p
        self._mat[positions] = vecs
        for field, col in self._cols.items():
            for row, (_, meta) in zip(positions.tolist(), metas, strict=True):
                v = meta.get(field, None)
                col.set(row, v, flt.value_kind(v) if field in meta else flt.MISSING)
        if new:
            self._rowsort = None
        self._ann_write(self._rowids[positions], vecs)

    async def delete(self, ids: Sequence[str]) -> None:
        async with self._wlock:
            await asyncio.to_thread(self._delete_sync, list(dict.fromkeys(ids)))

    def _delete_sync(self, ids: list[str]) -> None:
        with self._wmutex:
            self._check_open()
            gone = [self._pos[i] for i in ids if i in self._pos]
            if not gone:
                return

            def write(conn: sqlite3.Connection) -> None:
                conn.executemany("DELETE FROM chunks WHERE id = ?", ((i,) for i in ids))

            self._transaction(write, lambda: self._apply_delete(gone))
            self._maybe_start_ann()

    def _apply_delete(self, positions: list[int]) -> None:
        self._ann_write(self._rowids[positions], None)
        for p in sorted(positions, reverse=True):
            last = self._n - 1
            del self._pos[self._ids[p]]
            if p != last:
                moved = self._ids[last]
                self._mat[p], self._rowids[p] = self._mat[last], self._rowids[last]
                self._ids[p] = moved
                self._pos[moved] = p
                for col in self._cols.values():
                    col.move(last, p)
            self._ids.pop()
            self._n -= 1
        self._rowsort = None

    def _filter(self, filter: Filter | None) -> flt.NormFilter | None:
        if not filter:
            return None
        f = flt.validate_filter(filter)
        if "text" in f:
            raise InvalidRequest("metadata 'text' is not filterable; use a keyword query instead")
        return f

    def _positions_of(self, rowids: IntArray) -> IntArray:
        if self._rowsort is None:
            order = np.argsort(self._rowids[: self._n], kind="stable").astype(np.int64)
            self._rowsort = (self._rowids[order], order)
        srt, order = self._rowsort
        i = np.minimum(np.searchsorted(srt, rowids), max(len(srt) - 1, 0))
        if len(srt) == 0 or bool((srt[i] != rowids).any()):
            raise BackendError(f"index at {self.path}: keyword index out of sync with vectors")
        return order[i]

    def _column(self, field: str) -> flt.Column:
        col = self._cols.get(field)
        if col is None:
            if len(self._cols) >= _MAX_COLUMNS:
                del self._cols[next(iter(self._cols))]
            col = flt.Column(len(self._mat))
            path = f'$."{field}"'
            sql = "SELECT rowid, json_type(metadata, ?), json_extract(metadata, ?) FROM chunks"
            found = [r for r in self._rconn.execute(sql, (path, path)) if r[1] is not None]
            if found:
                rowids, kinds, values = zip(*found, strict=True)
                pos = self._positions_of(np.array(rowids, np.int64))
                col.set_many(pos, [_JSON_KIND.get(t, flt.OTHER) for t in kinds], values)
            self._cols[field] = col
        return col

    def _mask(self, f: flt.NormFilter) -> npt.NDArray[np.bool_]:
        m = np.ones(self._n, bool)
        for field, ops in f.items():
            col = self._column(field)
            for op, want in ops.items():
                m &= col.eval(op, want, self._n)
        return m

    def _top(self, scores: npt.NDArray[Any], k: int, pos: IntArray) -> list[tuple[int, float]]:
        if len(scores) > k:
            kth = scores[np.argpartition(-scores, k - 1)[:k]].min()
            keep = np.flatnonzero(scores >= kth)
            scores, pos = scores[keep], pos[keep]
        ranked = sorted(
            zip((-scores).tolist(), [self._ids[p] for p in pos], pos.tolist(), strict=True)
        )
        return [(p, -s) for s, _, p in ranked[:k]]

    def _fetch(self, hits: list[tuple[str, float]]) -> list[Match]:
        meta: dict[str, str] = {}
        ids = [cid for cid, _ in hits]
        for i in range(0, len(ids), _SQL_BATCH):
            part = ids[i : i + _SQL_BATCH]
            sql = f"SELECT id, metadata FROM chunks WHERE id IN ({','.join('?' * len(part))})"
            meta.update(self._rconn.execute(sql, part).fetchall())
        return [Match(c, s, json.loads(meta[c])) for c, s in hits if c in meta]

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        with self._state:
            self._check_open()
            try:
                return fn(*args)
            except sqlite3.Error as e:
                raise BackendError(f"index read failed: {e}") from e

    async def get(self, ids: Sequence[str]) -> list[Match]:
        hits = [(i, 1.0) for i in dict.fromkeys(ids)]
        return await asyncio.to_thread(self._read, self._fetch, hits)

    async def query(self, vector: Vector, top_k: int, filter: Filter | None = None) -> list[Match]:
        """Exact cosine top-k among the rows the filter admits, best first (ties by id)."""
        q = self._vectors([vector], ["query vector"])[0]
        k, f = _check_top_k(top_k), self._filter(filter)
        return await asyncio.to_thread(self._read, self._query_sync, q, k, f)

    def _query_sync(self, q: Vector, k: int, f: flt.NormFilter | None) -> list[Match]:
        mask = None if f is None else self._mask(f)
        top = self._ann_top(q, k, mask) if self._use_ann() else None
        if top is None:
            pos = np.arange(self._n, dtype=np.int64) if mask is None else np.flatnonzero(mask)
            if 4 * len(pos) < self._n:  # a selective filter: score only the rows it admits
                top = self._top(self._mat[pos] @ q, k, pos)
            else:
                top = self._top((self._mat[: self._n] @ q)[pos], k, pos)
        return self._fetch([(self._ids[p], s) for p, s in top])

    # --- approximate search (HNSW graph beside the SQLite file) -----------------------------

    def _use_ann(self) -> bool:
        return self._ann is not None and self._n >= (self.ann_threshold or 0)

    def _ann_top(
        self, q: Vector, k: int, mask: npt.NDArray[np.bool_] | None
    ) -> list[tuple[int, float]] | None:
        """Top-k by exact score among the graph's candidates; None to answer exactly instead
        (a filter admitting few rows, or too few candidates passing it)."""
        assert self._ann is not None
        fetch, size = ann_mod.fetch_count(k), len(self._ann)
        need = min(k, size)
        if mask is not None:
            need, admitted = ann_mod.passing_count(k), int(np.count_nonzero(mask))
            if admitted <= max(_ANN_EXACT_ROWS, need):
                return None
            fetch = math.ceil(need * self._n / admitted * _ANN_OVERFETCH)
        while True:
            pos = self._positions_of(self._ann.search(np.asarray(q), fetch))
            if mask is not None:
                pos = pos[mask[pos]]
            if len(pos) >= need:
                return self._top(self._mat[pos] @ q, k, pos)
            if fetch >= min(size, _ANN_MAX_FETCH):
                return None  # a small graph, or a filter few near rows pass
            fetch = min(fetch * 4, _ANN_MAX_FETCH)

    def _ann_write(self, rowids: IntArray, vecs: npt.NDArray[np.float32] | None) -> None:
        """Under _state, after a commit: the graph in use takes the new vectors (None: drops
        the rows); a graph being built learns which rows to redo (it finds deleted rows out by
        itself). Should the graph fail, queries go back to exact search."""
        if vecs is not None and self._journal is not None:
            self._journal.update(rowids.tolist())
        if self._ann is None:
            return
        try:
            if vecs is None:
                self._ann.remove(rowids)
            else:
                self._ann.replace(rowids, vecs)
        except Exception:
            log.exception("updating the vector graph of %s failed; searching exactly", self.path)
            self._ann, self._ann_failed = None, True

    def _maybe_start_ann(self) -> None:
        """Start loading or building the graph once the index holds `ann_threshold` vectors,
        or building a new one once the graph in use has seen many removals."""
        if self.ann_threshold is None or self._n < self.ann_threshold:
            return
        with self._state:
            graph, thread = self._ann, self._ann_thread
            if self._closed or self._ann_failed or (thread is not None and thread.is_alive()):
                return
            if graph is not None and graph.churn <= _ANN_REBUILD * max(len(graph), 1):
                return
            self._ann_thread = threading.Thread(
                target=self._ann_build, name=f"ann-build {self.path}", daemon=True
            )
            self._ann_thread.start()

    def _ann_build(self) -> None:
        try:
            self._ann_build_sync()
        except Exception as e:  # the index answers as before (exactly); the next open tries again
            if isinstance(e, ImportError):
                log.warning("no vector graph for %s (%s): install rag-service[local]", self.path, e)
            else:
                log.exception("building the vector graph of %s failed", self.path)
            with self._state:
                self._journal, self._ann_failed = None, True

    def _ann_build_sync(self) -> None:
        """Load the saved graph if it is current, else build one from the matrix a chunk at a
        time (the lock is held only to copy each chunk); then apply what was written meanwhile
        until little is left, apply that while queries wait, and put the graph in use."""
        t0 = time.perf_counter()
        dim = self.spec.dimensions
        with self._state:
            if self._closed or self._ann_stop:
                return
            self._journal = set()
            generation, count, rebuild = self._generation, self._n, self._ann is not None
        graph = None
        if not rebuild:  # (a rebuild replaces a graph in use that has seen many removals)
            graph = ann_mod.Hnsw.load(self.path, dim, (self._uid, generation), count)
        loaded = graph is not None
        if graph is None:
            graph = ann_mod.Hnsw(dim)
            start, pending = 0, []
            while True:
                with self._state:
                    if self._ann_stop:
                        return
                    end = min(start + _ANN_CHUNK, self._n)
                    keys, vecs = self._rowids[start:end].copy(), self._mat[start:end].copy()
                if start < end:
                    pending.append((keys, vecs))
                if pending and (start >= end or sum(len(k) for k, _ in pending) >= _ANN_ADD):
                    keys, first = np.unique(
                        np.concatenate([k for k, _ in pending]), return_index=True
                    )
                    vecs = np.concatenate([v for _, v in pending])[first]
                    pending = []
                    fresh = ~graph.contains(keys)  # a row moved by a delete may be in already
                    graph.add(keys[fresh], vecs[fresh])
                if start >= end:
                    break
                start = end
        while True:
            with self._state:
                if self._ann_stop:
                    return
                assert self._journal is not None
                live, have = self._rowids[: self._n], graph.keys()
                gone = np.setdiff1d(have, live)
                rewritten = np.fromiter(self._journal, np.int64, len(self._journal))
                todo = np.union1d(np.setdiff1d(live, have), np.intersect1d(rewritten, live))
                vecs = self._mat[self._positions_of(todo)] if len(todo) else self._mat[:0]
                self._journal = set()
                if len(todo) + len(gone) <= _ANN_CATCH_UP:
                    graph.remove(np.union1d(gone, todo))
                    graph.add(todo, vecs)
                    self._ann, self._journal = graph, None
                    self._saved_generation = self._generation if loaded else -1
                    break
            graph.remove(np.union1d(gone, todo))
            graph.add(todo, vecs)
        self.ann_stats = {
            "loaded": loaded,
            "rebuilt": rebuild,
            "seconds": round(time.perf_counter() - t0, 3),
            "memory_bytes": graph.memory_bytes,
        }
        if not loaded:
            with self._wmutex:  # writes wait; queries go on (saving only reads the graph)
                if not self._closed:
                    self._save_ann()

    def _save_ann(self) -> None:
        """Under _wmutex: write the graph unless the file already holds this generation."""
        if self._ann is not None and self._saved_generation != self._generation:
            try:
                self._ann.save(self.path, (self._uid, self._generation))
                self._saved_generation = self._generation
            except OSError as e:  # a graph not saved is rebuilt at the next open
                log.warning("cannot save the vector graph of %s: %s", self.path, e)

    async def wait_ann(self) -> bool:
        """Wait for a graph being loaded or built; True when queries use one."""
        thread = self._ann_thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
        return self._use_ann()

    def _match_expr(self, text: str, mode: str) -> str | None:
        """An FTS5 query for the words of `text`; control characters separate words, as spaces
        do (the porter tokenizer's words never hold them; trigram's would)."""
        text = _CONTROL.sub(" ", text)
        if self.keyword_tokenizer == "porter":
            words = content_words(_WORD.findall(text))
        else:
            words = text.split()
        terms = {
            w.casefold(): w for w in words if self.keyword_tokenizer == "porter" or len(w) >= 3
        }
        quoted = ['"' + t.replace('"', '""') + '"' for t in list(terms.values())[:_MAX_TERMS]]
        return (" OR " if mode == "or" else " AND ").join(quoted) or None

    async def keyword_query(
        self,
        text: str,
        top_k: int,
        filter: Filter | None = None,
        match_mode: Literal["and", "or"] = "or",
    ) -> list[Match]:
        """BM25 top-k over chunk text among the rows the filter admits; score is -bm25 (> 0)."""
        k, f = _check_top_k(top_k), self._filter(filter)
        if match_mode not in ("and", "or"):
            raise InvalidRequest(f"match_mode must be 'and' or 'or', got {match_mode!r}")
        expr = self._match_expr(text, match_mode)
        if expr is None:
            return []
        return await asyncio.to_thread(self._read, self._keyword_sync, expr, k, f)

    def _keyword_sync(self, expr: str, k: int, f: flt.NormFilter | None) -> list[Match]:
        """Stream matches best first, stopping once no later row can enter or tie the top-k."""
        mask = None if f is None else self._mask(f)
        sql = "SELECT rowid, -rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank"
        cur = self._rconn.execute(sql, (expr,))
        positions: list[IntArray] = []
        scores: list[npt.NDArray[np.float64]] = []
        kept, size = 0, max(256, 4 * k)
        while rows := cur.fetchmany(size):
            arr = np.array(rows, np.float64)
            pos, sc = self._positions_of(arr[:, 0].astype(np.int64)), arr[:, 1]
            if mask is not None:
                pos, sc = pos[mask[pos]], sc[mask[pos]]
            positions.append(pos)
            scores.append(sc)
            kept, size = kept + len(pos), min(size * 4, 1 << 16)
            if kept >= k and np.sort(np.concatenate(scores))[-k] > arr[-1, 1]:
                break
        cur.close()
        if not kept:
            return []
        top = self._top(np.concatenate(scores), k, np.concatenate(positions))
        return self._fetch([(self._ids[p], s) for p, s in top])

    async def count(self) -> int:
        return self._n

    def list_ids(self) -> list[str]:
        """Every committed chunk id, sorted (sync; reads its own connection, never waits)."""
        return self.ids_with_prefix("")

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Committed ids starting with `prefix` (e.g. `<item-id>:`), sorted; uses the id index."""
        self._check_open()
        out: list[str] = []
        sql = "SELECT id FROM chunks WHERE id >= ? ORDER BY id"
        with closing(self._lconn.execute(sql, (prefix,))) as cur:
            for (cid,) in cur:
                if not cid.startswith(prefix):
                    break
                out.append(cid)
        return out

    async def close(self) -> None:
        """Close; a graph in use is saved first (unless its file is current)."""
        async with self._wlock:
            thread = self._ann_thread
            if thread is not None and thread.is_alive():
                self._ann_stop = True
                await asyncio.to_thread(thread.join)
            await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._wmutex, self._state:
            if not self._closed:
                self._closed = True
                self._save_ann()
                self._ann = None
                self._rconn.close()
                self._lconn.close()
                self._conn.close()
