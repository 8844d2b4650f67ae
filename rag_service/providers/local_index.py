"""Embedded on-disk index: SQLite (WAL + FTS5) for durability, numpy for exact cosine search.

One directory per index holding one SQLite file. `chunks` keeps id, float32 vector and JSON
metadata (with the chunk text under `text`); an external-content FTS5 table over that text is
kept in sync by triggers, so every upsert or delete is one all-or-nothing transaction. At open
all vectors are loaded into a float32 matrix; queries are exact (filter first, then top-k).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from rag_service.errors import BackendError, IndexMismatch, InvalidRequest
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
    Reopening with another keyword tokenizer rebuilds the keyword index.
    """

    def __init__(self, path: Path, spec: IndexSpec, tokenizer: KeywordTokenizer) -> None:
        self.path, self.spec, self.keyword_tokenizer = path, spec, tokenizer
        self._wlock = asyncio.Lock()
        self._wmutex = threading.Lock()
        self._state = threading.Lock()
        self._closed = False
        self._cols: dict[str, flt.Column] = {}
        self._rowsort: tuple[IntArray, IntArray] | None = None
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

    @classmethod
    def open(
        cls, path: Path, spec: IndexSpec, keyword_tokenizer: KeywordTokenizer = "porter"
    ) -> LocalIndex:
        """Open or create the index in `path`; IndexMismatch if it was built for another spec."""
        if keyword_tokenizer not in _TOKENIZE:
            raise InvalidRequest(f"keyword_tokenizer must be one of {sorted(_TOKENIZE)}")
        if spec.dimensions < 1:
            raise InvalidRequest("index dimensions must be positive")
        path.mkdir(parents=True, exist_ok=True)
        try:
            return cls(path, spec, keyword_tokenizer)
        except sqlite3.Error as e:
            raise BackendError(f"cannot open index at {path}: {e}") from e

    @classmethod
    async def aopen(
        cls, path: Path, spec: IndexSpec, keyword_tokenizer: KeywordTokenizer = "porter"
    ) -> LocalIndex:
        """`open` in a worker thread (loading a big index takes a while)."""
        return await asyncio.to_thread(cls.open, path, spec, keyword_tokenizer)

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

    def _transaction(
        self, write: Callable[[sqlite3.Connection], None], apply: Callable[[], None]
    ) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            write(conn)
            with self._state:
                conn.execute("COMMIT")
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

    def _apply_delete(self, positions: list[int]) -> None:
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
        scores = self._mat[: self._n] @ q
        pos = np.arange(self._n, dtype=np.int64) if f is None else np.flatnonzero(self._mask(f))
        top = self._top(scores[pos], k, pos)
        return self._fetch([(self._ids[p], s) for p, s in top])

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
        async with self._wlock:
            with self._wmutex, self._state:
                if not self._closed:
                    self._closed = True
                    self._rconn.close()
                    self._lconn.close()
                    self._conn.close()
