"""Keyword (BM25) search in PostgreSQL: the keyword side of an index that several hosts share.

Chunks live in `ragd_keyword.chunks` (migration 0004, PostgreSQL only): the metadata as written,
the filterable metadata as JSONB, the text's terms as a `tsvector` under a GIN index, and the
text's length in tokens; `ragd_keyword.totals` keeps each instance's chunk and token counts and
is the lock that orders writers. Both cascade from `instances`, so deleting an instance empties
its keyword index.

Terms are made by SQLite's own FTS5 tokenizers (`porter unicode61` or `trigram`, run on an
in-memory table), not by a PostgreSQL text search configuration, so a chunk holds exactly the
terms the local index (`LocalIndex`) would give it; positions are kept, so a query word of
several tokens (`foo_bar`, a trigram word) is a phrase, as in FTS5. Each lexeme starts with a
short hash of the instance's id, so the GIN index keeps instances' postings apart. Scoring is
FTS5's BM25 (k1 = 1.2, b = 0.75; idf = ln((N - n + 0.5) / (n + 0.5)), at least 1e-6), computed
in one SQL statement: document frequencies are counted at query time through the GIN index
(always exact under concurrent writers), N and the average length come from `totals`. Filters
are SQL over the JSONB column with `matches`' semantics. The ranking is LocalIndex's (same
terms, same formula): on NegConstraint both give keyword nDCG@10 0.7144 and hybrid 0.7264;
`ts_rank_cd` (0.7119, Recall@10 0.944) and `ts_rank` (0.7171, Recall@10 0.934) measured no
better.

Limits of `tsvector`: a lexeme is cut to 2040 bytes, positions past 16383 count as 16383, and a
term's frequency counts at most 256 occurrences; chunks are far shorter.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import math
import re
import sqlite3
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from sqlalchemy import text as sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import TextClause

from rag_service.errors import BackendError, InvalidRequest
from rag_service.providers import filters as flt
from rag_service.providers.protocols import (
    Filter,
    IndexSpec,
    Match,
    MetadataValue,
    Vector,
    VectorIndex,
    VectorRecord,
)
from rag_service.providers.stopwords import content_words

KeywordTokenizer = Literal["porter", "trigram"]
SCHEMA = "ragd_keyword"
K1, B = 1.2, 0.75  # SQLite FTS5's bm25() defaults
_FTS5 = {"porter": "porter unicode61", "trigram": "trigram"}
_MAX_TERMS = 64  # query words used, as in LocalIndex
_MAX_LEXEME_BYTES = 2040  # tsvector: 2047 at most, with the instance's prefix
_MAX_TSVECTOR_BYTES = 1_000_000  # tsvector: lexemes' bytes under 1 MiB
_MAX_POS, _MAX_POSITIONS = 16383, 256  # tsvector: highest position; positions kept per lexeme
_WORD = re.compile(r"\w+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

_LOCK = sql(f"SELECT tokenizer FROM {SCHEMA}.totals WHERE instance_id = :i FOR UPDATE")
_DELETE = sql(
    f"DELETE FROM {SCHEMA}.chunks WHERE instance_id = :i "
    "AND chunk_id = ANY(CAST(:ids AS text[])) RETURNING doc_len"
)
_INSERT = sql(
    f"INSERT INTO {SCHEMA}.chunks (instance_id, chunk_id, doc_len, tsv, metadata, fmeta) "
    "SELECT :i, r.id, r.len, CAST(r.tsv AS tsvector), r.meta, CAST(r.fmeta AS jsonb) "
    "FROM unnest(CAST(:ids AS text[]), CAST(:lens AS int[]), CAST(:tsvs AS text[]), "
    "CAST(:metas AS text[]), CAST(:fmetas AS text[])) AS r(id, len, tsv, meta, fmeta)"
)
_TOTALS = sql(
    f"UPDATE {SCHEMA}.totals SET docs = docs + :docs, tokens = tokens + :tokens "
    "WHERE instance_id = :i"
)
# One statement, one snapshot: per phrase its weight (query words giving it), its document
# frequency (counted through the GIN index) and idf; the candidates (the tsquery and the filter)
# with their query terms' frequencies; BM25 summed over the phrases each candidate holds.
# `(instance_id = :i) IS TRUE` is not indexable on purpose: rows are found by the GIN index
# alone (ANDed with the primary key, every chunk id of the instance would be read per phrase).
_BM25 = f"""
WITH st AS MATERIALIZED (
    SELECT docs::float8 AS n, tokens::float8 / greatest(docs, 1) AS avgdl
    FROM {SCHEMA}.totals WHERE instance_id = :i
),
ph AS MATERIALIZED (
    SELECT p.n, p.q, p.ntok, p.w * greatest(ln((st.n - h.hits + 0.5) / (h.hits + 0.5)), 1e-6) AS idf
    FROM unnest(CAST(:ph_q AS text[]), CAST(:ph_ntok AS int[]), CAST(:ph_w AS int[]))
        WITH ORDINALITY AS p(q, ntok, w, n)
    CROSS JOIN st
    CROSS JOIN LATERAL (
        SELECT count(*)::float8 AS hits FROM {SCHEMA}.chunks c
        WHERE (c.instance_id = :i) IS TRUE AND c.tsv @@ CAST(p.q AS tsquery)
    ) h
),
tok AS (
    SELECT t.n, t.lexeme FROM unnest(CAST(:tok_n AS bigint[]), CAST(:tok_lex AS text[]))
        AS t(n, lexeme)
),
cand AS MATERIALIZED (
    SELECT c.chunk_id, c.doc_len,
        ts_filter(setweight(c.tsv, 'A', CAST(:lexemes AS text[])), '{{a}}') AS q
    FROM {SCHEMA}.chunks c
    WHERE (c.instance_id = :i) IS TRUE AND c.tsv @@ CAST(:query AS tsquery) AND {{filter}}
),
tf AS (
    SELECT cand.chunk_id, tok.n, min(cardinality(u.positions))::float8 AS tf, count(*) AS found
    FROM cand CROSS JOIN LATERAL unnest(cand.q) AS u JOIN tok ON tok.lexeme = u.lexeme
    GROUP BY cand.chunk_id, tok.n
),
scored AS (
    SELECT tf.chunk_id,
        sum(ph.idf * tf.tf * ({K1} + 1)
            / (tf.tf + {K1} * (1 - {B} + {B} * cand.doc_len::float8 / st.avgdl))) AS score
    FROM tf JOIN ph ON ph.n = tf.n JOIN cand ON cand.chunk_id = tf.chunk_id CROSS JOIN st
    WHERE tf.found = ph.ntok AND (ph.ntok = 1 OR cand.q @@ CAST(ph.q AS tsquery))
    GROUP BY tf.chunk_id
    ORDER BY score DESC, tf.chunk_id COLLATE "C"
    LIMIT :k
)
SELECT s.chunk_id, s.score, c.metadata
FROM scored s JOIN {SCHEMA}.chunks c ON c.instance_id = :i AND c.chunk_id = s.chunk_id
ORDER BY s.score DESC, s.chunk_id COLLATE "C"
"""


# --- terms: SQLite FTS5's tokenizers on a per-thread in-memory table --------------------------

_scratch = threading.local()


def _fts5(tokenizer: KeywordTokenizer) -> sqlite3.Connection:
    conns: dict[str, sqlite3.Connection] = _scratch.__dict__.setdefault("conns", {})
    conn = conns.get(tokenizer)
    if conn is None:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute(
            f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{_FTS5[tokenizer]}', content='')"
        )
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        conns[tokenizer] = conn
    return conn


def _clean(s: str) -> str:
    """Control characters become spaces (never part of a queryable term: FTS5 separates words
    at them, queries drop them) and lone surrogates U+FFFD (not UTF-8)."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", s))


def _lexeme(term: str) -> str:
    data = term.encode()
    if len(data) <= _MAX_LEXEME_BYTES:
        return term
    return data[:_MAX_LEXEME_BYTES].decode(errors="ignore")


def _tokenize(tokenizer: KeywordTokenizer, texts: Sequence[str]) -> list[dict[str, list[int]]]:
    """Each text's terms with their 1-based positions, as FTS5 with `tokenizer` indexes it."""
    out: list[dict[str, list[int]]] = [{} for _ in texts]
    conn = _fts5(tokenizer)
    conn.execute("BEGIN")
    try:
        conn.executemany(
            "INSERT INTO t(rowid, x) VALUES (?, ?)", ((i, _clean(s)) for i, s in enumerate(texts))
        )
        for doc, term, offset in conn.execute("SELECT doc, term, offset FROM v"):
            out[doc].setdefault(_lexeme(term), []).append(offset + 1)
    finally:
        conn.execute("ROLLBACK")
    return out


def _quote(lexeme: str) -> str:
    """A lexeme as a quoted tsvector/tsquery literal."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def instance_prefix(instance_id: str) -> str:
    """What every lexeme of an instance starts with: 24 bits of a hash of its id. The GIN index
    then keeps each instance's postings apart (a small instance's query never reads a big
    one's); a collision costs only rows that `instance_id` then leaves out."""
    digest = hashlib.sha256(instance_id.encode()).digest()
    return base64.urlsafe_b64encode(digest[:3]).decode() + "|"


def _tsvector(terms: Mapping[str, list[int]], prefix: str) -> tuple[int, str]:
    """(length in tokens, tsvector literal) of one text's terms, each after `prefix`."""
    length = sum(len(p) for p in terms.values())
    parts, budget = [], _MAX_TSVECTOR_BYTES
    for lexeme, positions in terms.items():
        budget -= len(lexeme.encode()) + 8
        if budget < 0:
            break
        if len(positions) == 1:  # most terms
            parts.append(f"{_quote(prefix + lexeme)}:{min(positions[0], _MAX_POS)}")
        else:
            kept = sorted({min(p, _MAX_POS) for p in positions})[:_MAX_POSITIONS]
            parts.append(f"{_quote(prefix + lexeme)}:{','.join(map(str, kept))}")
    return length, " ".join(parts)


@functools.lru_cache(maxsize=65536)
def _phrase(tokenizer: KeywordTokenizer, word: str) -> tuple[str, ...]:
    """A query word's tokens in order (a phrase when more than one)."""
    terms = _tokenize(tokenizer, [word])[0]
    return tuple(t for _, t in sorted((p, t) for t, ps in terms.items() for p in ps))


def query_phrases(
    tokenizer: KeywordTokenizer, query: str, mode: Literal["and", "or"]
) -> list[tuple[tuple[str, ...], int]] | None:
    """The query's phrases with their weights (query words giving them), as LocalIndex builds
    its FTS5 query: porter takes the content words (stopwords dropped unless nothing else is
    left), trigram the whitespace-separated words of 3 or more characters; 64 at most. None
    when nothing can match ("and" with a word that has no token)."""
    cleaned = _clean(query)
    if tokenizer == "porter":
        words = content_words(_WORD.findall(cleaned))
    else:
        words = [w for w in cleaned.split() if len(w) >= 3]
    unique = list({w.casefold(): w for w in words}.values())[:_MAX_TERMS]
    weights: dict[tuple[str, ...], int] = {}
    for word in unique:
        tokens = _phrase(tokenizer, word)
        if not tokens:
            if mode == "and":
                return None
            continue
        weights[tokens] = weights.get(tokens, 0) + 1
    return list(weights.items()) or None


def _tsquery(tokens: Sequence[str]) -> str:
    return "(" + " <-> ".join(_quote(t) for t in tokens) + ")"


# --- filters as SQL over the JSONB column ------------------------------------------------------

_RANGE_SQL = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}


def _filterable(rid: str, meta: Mapping[str, MetadataValue]) -> str:
    """The metadata a filter compares, as JSONB text: strings as Vectorize indexes them
    (`filters.indexed`), `text` left out (not filterable)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k == "text" or _CONTROL.search(k) or _SURROGATE.search(k):
            continue  # never a valid filter field
        out[k] = _clean_value(flt.indexed(v)) if isinstance(v, str) else v
    return json.dumps(out, ensure_ascii=False)


def _clean_value(s: str) -> str:
    # NUL is not storable in JSONB: U+0001 sorts the same against any filter value (those hold
    # no control characters) and equals none of them, as NUL would.
    return _SURROGATE.sub("\ufffd", s.replace("\x00", "\x01"))


def _storable(s: object) -> bool:
    """A string PostgreSQL can hold as text (no NUL, no lone surrogate)."""
    return isinstance(s, str) and "\x00" not in s and not _SURROGATE.search(s)


def _json_value(v: Any) -> str:
    return json.dumps(_clean_value(v) if isinstance(v, str) else v, ensure_ascii=False)


def filter_sql(f: flt.NormFilter, params: dict[str, Any]) -> str:
    """A WHERE condition over `c.fmeta` meaning what `filters.matches` means; binds in `params`."""
    conds: list[str] = []

    def bind(value: Any) -> str:
        name = f"f{len(params)}"
        params[name] = value
        return f":{name}"

    for field, ops in f.items():
        key = bind(_clean_value(field))
        have = f"(c.fmeta -> {key})"
        for op, want in ops.items():
            if op in ("$eq", "$ne"):
                v = f"CAST(CAST({bind(_json_value(want))} AS text) AS jsonb)"
                conds.append(f"{have} = {v}" if op == "$eq" else f"{have} IS DISTINCT FROM {v}")
            elif op in ("$in", "$nin"):
                vs = f"CAST(CAST({bind([_json_value(w) for w in want])} AS text[]) AS jsonb[])"
                cond = f"COALESCE({have} = ANY({vs}), false)"
                conds.append(cond if op == "$in" else f"NOT {cond}")
            else:
                kind, sym = flt.value_kind(want), _RANGE_SQL[op]
                if kind == flt.NUM:
                    v = f"CAST(CAST({bind(json.dumps(want))} AS text) AS jsonb)"
                    conds.append(
                        f"(CASE WHEN jsonb_typeof({have}) = 'number' THEN {have} {sym} {v} "
                        "ELSE false END)"
                    )
                elif kind == flt.STR:
                    v = f"CAST({bind(_clean_value(want))} AS text)"
                    conds.append(
                        f"(CASE WHEN jsonb_typeof({have}) = 'string' THEN "
                        f'(c.fmeta ->> {key}) COLLATE "C" {sym} {v} ELSE false END)'
                    )
                else:
                    conds.append("false")  # a boolean bound: nothing compares with it
    return " AND ".join(conds) or "true"


# --- engines: one per database URL and event loop, shared by that loop's keyword indexes -------

_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def check_postgres(url: str) -> None:
    """InvalidRequest unless `url` is a PostgreSQL URL."""
    try:
        backend = make_url(url).get_backend_name()
    except Exception as exc:
        raise InvalidRequest(f"not a database URL: {exc}") from None
    if backend != "postgresql":
        raise InvalidRequest(
            "the PostgreSQL keyword index (RAGD_KEYWORD_INDEX=postgres) keeps its tables in the "
            f"database, which must be PostgreSQL (RAGD_DATABASE_URL=postgresql+asyncpg://...); "
            f"this one is {backend}"
        )


def _acquire(url: str) -> AsyncEngine:
    held = _engines.setdefault(asyncio.get_running_loop(), {})
    if url not in held:
        held[url] = [create_async_engine(url, pool_pre_ping=True), 0]
    held[url][1] += 1
    engine: AsyncEngine = held[url][0]
    return engine


async def _release(url: str, loop: asyncio.AbstractEventLoop) -> None:
    held = _engines.get(loop, {})
    if url in held:
        held[url][1] -= 1
        if held[url][1] <= 0:
            engine: AsyncEngine = held.pop(url)[0]
            await engine.dispose()


def _check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidRequest(f"top_k must be a positive integer, got {top_k!r}")
    return top_k


def _metadata(rid: str, meta: Mapping[str, MetadataValue]) -> str:
    """The metadata as JSON text (any string survives: NUL and lone surrogates are escaped)."""
    for k, v in meta.items():
        ok = v is None or isinstance(v, str | int | float)
        if not isinstance(k, str) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise InvalidRequest(f"chunk {rid!r}: metadata {k!r} must be a finite scalar")
    if not isinstance(meta.get("text", ""), str):
        raise InvalidRequest(f"chunk {rid!r}: metadata 'text' must be a string")
    out = json.dumps(dict(meta), ensure_ascii=False)
    return out if not _SURROGATE.search(out) else json.dumps(dict(meta))


class PgKeywordIndex:
    """One instance's keyword index in PostgreSQL: upsert, delete, keyword_query, get, count.

    Open with `await PgKeywordIndex.open(database_url, instance_id, tokenizer)`; every index of
    one database URL in one event loop shares an engine, disposed with the last one closed.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        instance_id: str,
        tokenizer: KeywordTokenizer = "porter",
        *,
        url: str | None = None,
    ) -> None:
        if tokenizer not in _FTS5:
            raise InvalidRequest(f"keyword_tokenizer must be one of {sorted(_FTS5)}")
        self.engine, self.instance_id, self.tokenizer = engine, instance_id, tokenizer
        self._url = url
        self._prefix = instance_prefix(instance_id)
        self._loop = asyncio.get_running_loop()
        self._closed = False

    @classmethod
    async def open(
        cls, database_url: str, instance_id: str, tokenizer: KeywordTokenizer = "porter"
    ) -> PgKeywordIndex:
        """Open (creating its totals row) the instance's keyword index; the instance must be
        in the database. A tokenizer other than the stored one re-tokenizes every chunk."""
        check_postgres(database_url)
        index = cls(_acquire(database_url), instance_id, tokenizer, url=database_url)
        try:
            await index.prepare()
        except BaseException:
            await index.close()
            raise
        return index

    async def prepare(self) -> None:
        """Create the totals row; rebuild the terms when the stored tokenizer differs."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    sql(
                        f"INSERT INTO {SCHEMA}.totals (instance_id, tokenizer, docs, tokens) "
                        "VALUES (:i, :t, 0, 0) ON CONFLICT (instance_id) DO NOTHING"
                    ),
                    {"i": self.instance_id, "t": self.tokenizer},
                )
                stored = (await conn.execute(_LOCK, {"i": self.instance_id})).scalar_one()
                if stored != self.tokenizer:
                    await self._rebuild(conn)
        except IntegrityError:
            raise BackendError(
                f"keyword index: instance {self.instance_id!r} is not in the database"
            ) from None
        except DBAPIError as exc:
            raise self._error("open", exc) from exc

    async def _rebuild(self, conn: AsyncConnection) -> None:
        rows = (
            await conn.execute(
                sql(f"SELECT chunk_id, metadata FROM {SCHEMA}.chunks WHERE instance_id = :i"),
                {"i": self.instance_id},
            )
        ).all()
        total = 0
        for start in range(0, len(rows), 1000):
            part = rows[start : start + 1000]
            texts = [str(json.loads(m).get("text") or "") for _, m in part]
            built = await asyncio.to_thread(self._terms, texts)
            total += sum(n for n, _ in built)
            await conn.execute(
                sql(
                    f"UPDATE {SCHEMA}.chunks c SET doc_len = r.len, tsv = CAST(r.tsv AS tsvector) "
                    "FROM unnest(CAST(:ids AS text[]), CAST(:lens AS int[]), "
                    "CAST(:tsvs AS text[])) AS r(id, len, tsv) "
                    "WHERE c.instance_id = :i AND c.chunk_id = r.id"
                ),
                {
                    "i": self.instance_id,
                    "ids": [cid for cid, _ in part],
                    "lens": [n for n, _ in built],
                    "tsvs": [t for _, t in built],
                },
            )
        await conn.execute(
            sql(
                f"UPDATE {SCHEMA}.totals SET tokenizer = :t, docs = :d, tokens = :n "
                "WHERE instance_id = :i"
            ),
            {"i": self.instance_id, "t": self.tokenizer, "d": len(rows), "n": total},
        )

    def _terms(self, texts: Sequence[str]) -> list[tuple[int, str]]:
        return [_tsvector(terms, self._prefix) for terms in _tokenize(self.tokenizer, texts)]

    def _error(self, what: str, exc: DBAPIError) -> BackendError:
        return BackendError(
            f"keyword index {what} failed: {str(exc.orig).splitlines()[0]}",
            transient=exc.connection_invalidated,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"keyword index of {self.instance_id!r} is closed")

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A transaction holding the instance's totals row: writers of one instance queue here,
        whichever host they run on."""
        self._check_open()
        try:
            async with self.engine.begin() as conn:
                stored = (await conn.execute(_LOCK, {"i": self.instance_id})).scalar_one_or_none()
                if stored is None:
                    raise BackendError(f"instance {self.instance_id!r} is not in the database")
                if stored != self.tokenizer:
                    raise BackendError(
                        f"the keyword index of {self.instance_id!r} was rebuilt with the "
                        f"{stored} tokenizer; reopen it"
                    )
                yield conn
        except DBAPIError as exc:
            raise self._error("write", exc) from exc

    async def upsert(self, records: Sequence[VectorRecord]) -> None:
        latest: dict[str, VectorRecord] = {}
        for r in records:
            if not isinstance(r.id, str) or not r.id or not _storable(r.id):
                raise InvalidRequest("chunk ids must be non-empty strings without NUL")
            latest[r.id] = r
        if not latest:
            return
        ids = list(latest)
        metas = [_metadata(i, r.metadata) for i, r in latest.items()]
        fmetas = [_filterable(i, r.metadata) for i, r in latest.items()]
        texts = [str(r.metadata.get("text") or "") for r in latest.values()]
        built = await asyncio.to_thread(self._terms, texts)
        async with self._writing() as conn:
            old = (await conn.execute(_DELETE, {"i": self.instance_id, "ids": ids})).scalars()
            old_lens = list(old)
            params = {
                "i": self.instance_id,
                "ids": ids,
                "lens": [n for n, _ in built],
                "tsvs": [t for _, t in built],
                "metas": metas,
                "fmetas": fmetas,
            }
            await conn.execute(_INSERT, params)
            tokens = sum(n for n, _ in built) - sum(old_lens)
            totals = {"i": self.instance_id, "docs": len(ids) - len(old_lens), "tokens": tokens}
            await conn.execute(_TOTALS, totals)

    async def delete(self, ids: Sequence[str]) -> None:
        unique = [i for i in dict.fromkeys(ids) if _storable(i)]  # others were never stored
        if not unique:
            return
        async with self._writing() as conn:
            gone = list(
                (await conn.execute(_DELETE, {"i": self.instance_id, "ids": unique})).scalars()
            )
            if gone:
                totals = {"i": self.instance_id, "docs": -len(gone), "tokens": -sum(gone)}
                await conn.execute(_TOTALS, totals)

    async def get(self, ids: Sequence[str]) -> list[Match]:
        """Stored chunks by id (score 1.0), in the order asked, missing ids left out."""
        self._check_open()
        unique = [i for i in dict.fromkeys(ids) if _storable(i)]
        if not unique:
            return []
        stmt = sql(
            f"SELECT chunk_id, metadata FROM {SCHEMA}.chunks WHERE instance_id = :i "
            "AND chunk_id = ANY(CAST(:ids AS text[]))"
        )
        params = {"i": self.instance_id, "ids": unique}
        rows = dict((await self._read(stmt, params)).all())
        return [Match(i, 1.0, json.loads(rows[i])) for i in unique if i in rows]

    async def _read(self, stmt: TextClause, params: dict[str, Any]) -> Any:
        self._check_open()
        try:
            async with self.engine.connect() as conn:
                return await conn.execute(stmt, params)
        except DBAPIError as exc:
            raise self._error("read", exc) from exc

    async def keyword_query(
        self,
        text: str,
        top_k: int,
        filter: Filter | None = None,
        match_mode: Literal["and", "or"] = "or",
    ) -> list[Match]:
        """BM25 top-k over chunk text among the chunks the filter admits, best first (ties by
        id); the score is FTS5's bm25 negated (> 0), as LocalIndex gives it."""
        k = _check_top_k(top_k)
        f = flt.validate_filter(filter) if filter else None
        if f and "text" in f:
            raise InvalidRequest("metadata 'text' is not filterable; use a keyword query instead")
        if match_mode not in ("and", "or"):
            raise InvalidRequest(f"match_mode must be 'and' or 'or', got {match_mode!r}")
        found = query_phrases(self.tokenizer, text, match_mode)
        if found is None:
            return []
        phrases = [(tuple(self._prefix + t for t in p), w) for p, w in found]
        params: dict[str, Any] = {}
        where = filter_sql(f, params) if f else "true"
        tok = [(n, lex) for n, (p, _) in enumerate(phrases, 1) for lex in dict.fromkeys(p)]
        params.update(
            i=self.instance_id,
            k=k,
            query=(" & " if match_mode == "and" else " | ").join(_tsquery(p) for p, _ in phrases),
            ph_q=[_tsquery(p) for p, _ in phrases],
            ph_ntok=[len(set(p)) for p, _ in phrases],
            ph_w=[w for _, w in phrases],
            tok_n=[n for n, _ in tok],
            tok_lex=[lex for _, lex in tok],
            lexemes=sorted({lex for _, lex in tok}),
        )
        rows = (await self._read(sql(_BM25.replace("{filter}", where)), params)).all()
        return [Match(cid, float(score), json.loads(meta)) for cid, score, meta in rows]

    async def count(self) -> int:
        stmt = sql(f"SELECT docs FROM {SCHEMA}.totals WHERE instance_id = :i")
        return int((await self._read(stmt, {"i": self.instance_id})).scalar_one_or_none() or 0)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._url is not None:
                await _release(self._url, self._loop)


class SplitIndex:
    """A `VectorIndex` whose vectors are in one index (a LocalIndex) and whose keyword search
    is a `PgKeywordIndex`: writes go to both, vector reads to the first, keyword reads to the
    second."""

    def __init__(self, vectors: VectorIndex, keyword: PgKeywordIndex) -> None:
        self.vectors, self.keyword = vectors, keyword
        self.spec: IndexSpec = vectors.spec

    async def upsert(self, records: Sequence[VectorRecord]) -> None:
        await self.vectors.upsert(records)
        await self.keyword.upsert(records)

    async def delete(self, ids: Sequence[str]) -> None:
        await self.vectors.delete(ids)
        await self.keyword.delete(ids)

    async def get(self, ids: Sequence[str]) -> list[Match]:
        return await self.vectors.get(ids)

    async def query(self, vector: Vector, top_k: int, filter: Filter | None = None) -> list[Match]:
        return await self.vectors.query(vector, top_k, filter)

    async def keyword_query(
        self,
        text: str,
        top_k: int,
        filter: Filter | None = None,
        match_mode: Literal["and", "or"] = "or",
    ) -> list[Match]:
        return await self.keyword.keyword_query(text, top_k, filter, match_mode)

    async def count(self) -> int:
        return await self.vectors.count()

    async def close(self) -> None:
        try:
            await self.vectors.close()
        finally:
            await self.keyword.close()


@asynccontextmanager
async def temporary_database(url: str) -> AsyncIterator[str]:
    """A new empty database on `url`'s PostgreSQL server (its user needs CREATEDB), dropped
    on exit: for runs that must leave nothing behind (`ragd eval`)."""
    check_postgres(url)
    base = make_url(url)
    name = f"ragd_tmp_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sql(f'CREATE DATABASE "{name}"'))
    except DBAPIError as exc:
        await admin.dispose()
        raise BackendError(f"cannot create a database: {str(exc.orig).splitlines()[0]}") from exc
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
