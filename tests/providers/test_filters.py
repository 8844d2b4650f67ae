from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rag_service.errors import InvalidRequest
from rag_service.providers.filters import (
    MISSING,
    Column,
    autorag_to_vectorize,
    matches,
    parse_filter,
    validate_filter,
    value_kind,
)

DOC = {"folder": "customer-a/docs/", "ts": 1700, "score": 2.5, "ok": True, "none": None}


def m(f: Any, meta: dict[str, Any] = DOC) -> bool:
    return matches(meta, validate_filter(f))


@pytest.mark.parametrize(
    ("f", "want"),
    [
        ({"folder": "customer-a/docs/"}, True),
        ({"folder": {"$eq": "customer-b/"}}, False),
        ({"folder": {"$ne": "customer-b/"}}, True),
        ({"ts": {"$in": [1, 1700]}}, True),
        ({"ts": {"$nin": [1, 1700]}}, False),
        ({"ts": {"$lt": 1700}}, False),
        ({"ts": {"$lte": 1700}}, True),
        ({"ts": {"$gt": 1699.5}}, True),
        ({"ts": {"$gte": 1701}}, False),
        ({"score": 2.5}, True),
        ({"ts": 1700.0}, True),
        ({"none": None}, True),
        ({"none": {"$ne": None}}, False),
        ({"ok": True}, True),
        ({"ok": {"$in": [False, True]}}, True),
    ],
)
def test_each_op(f: Any, want: bool) -> None:
    assert m(f) is want


def test_implicit_and() -> None:
    assert m({"folder": "customer-a/docs/", "ts": {"$gte": 1000, "$lt": 2000}})
    assert not m({"folder": "customer-a/docs/", "ts": {"$gte": 1000, "$lt": 1500}})
    assert not m({"folder": "nope", "ts": 1700})


def test_missing_field() -> None:
    assert not m({"gone": "x"})
    assert not m({"gone": None})
    assert not m({"gone": {"$in": ["x"]}})
    assert not m({"gone": {"$lt": 5}})
    assert not m({"gone": {"$gte": ""}})
    assert m({"gone": {"$ne": "x"}})
    assert m({"gone": {"$ne": None}})
    assert m({"gone": {"$nin": ["x"]}})


def test_cross_type_is_false() -> None:
    assert not m({"ts": "1700"})
    assert not m({"ts": {"$gt": "1"}})
    assert not m({"folder": {"$lt": 5}})
    assert m({"ts": {"$ne": "1700"}})
    assert m({"folder": {"$nin": [1, 2]}})


def test_bool_is_not_a_number() -> None:
    meta = {"flag": True, "one": 1}
    assert not m({"flag": 1}, meta)
    assert not m({"one": True}, meta)
    assert not m({"one": {"$in": [True]}}, meta)
    assert m({"flag": {"$ne": 1}}, meta)
    assert not m({"flag": {"$gt": False}}, meta)
    assert not m({"flag": {"$gte": 0}}, meta)
    assert not m({"one": {"$gte": False}}, meta)
    assert value_kind(True) != value_kind(1)


def test_strings_compare_lexicographically() -> None:
    assert m({"folder": {"$gt": "customer-a"}})
    assert m({"folder": {"$lt": "customer-b"}})
    assert not m({"folder": {"$lt": "Customer"}})  # uppercase sorts first


def test_folder_starts_with_trick() -> None:
    trick = {"folder": {"$gt": "customer-a//", "$lte": "customer-a/z"}}
    assert m(trick, {"folder": "customer-a/docs/"})
    assert m(trick, {"folder": "customer-a/x/y/"})
    assert not m(trick, {"folder": "customer-b/docs/"})
    assert not m(trick, {"folder": "customer-ab/"})
    assert not m(trick, {"folder": "/"})


def test_normalises() -> None:
    assert validate_filter({"a": 1, "b": {"$in": ("x", "y")}}) == {
        "a": {"$eq": 1},
        "b": {"$in": ["x", "y"]},
    }


@pytest.mark.parametrize(
    ("f", "needle"),
    [
        ({"a": {"$regex": "x"}}, "unknown filter operator '$regex'"),
        ({"a": {"$like": 1}}, "$eq, $ne, $in, $nin, $lt, $lte, $gt, $gte"),
        ({"": 1}, "non-empty"),
        ({"a.b": 1}, "'.'"),
        ({'a"b': 1}, "'a\"b'"),
        ({"$and": 1}, "start with '$'"),
        ({"a": {"$eq": [1, 2]}}, "use $in"),
        ({"a": [1, 2]}, "use $in"),
        ({"a": {"$in": 1}}, "non-empty list"),
        ({"a": {"$in": []}}, "non-empty list"),
        ({"a": {"$nin": [None]}}, "list items"),
        ({"a": {"$in": [[1]]}}, "list items"),
        ({"a": {"$eq": {"b": 1}}}, "nested too deeply"),
        ({"a": {"$lt": None}}, "string or number"),
        ({"a": {"$eq": float("nan")}}, "got float"),
        ({"a": {}}, "no operator"),
        ([1], "must be an object"),
        ({"a": {"b": {"$eq": 1}}}, "unknown filter operator 'b'"),
    ],
)
def test_validation_errors(f: Any, needle: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate_filter(f)
    assert needle in e.value.message
    assert "\n" not in e.value.message


def test_autorag_comparisons() -> None:
    for t in ("eq", "ne", "gt", "gte", "lt", "lte"):
        f = {"type": t, "key": "ts", "value": 5}
        assert autorag_to_vectorize(f) == {"ts": {f"${t}": 5}}


def test_autorag_and_merges_same_key() -> None:
    f = {
        "type": "and",
        "filters": [
            {"type": "gt", "key": "folder", "value": "customer-a//"},
            {"type": "lte", "key": "folder", "value": "customer-a/z"},
            {"type": "and", "filters": [{"type": "gte", "key": "timestamp", "value": 10}]},
        ],
    }
    assert autorag_to_vectorize(f) == {
        "folder": {"$gt": "customer-a//", "$lte": "customer-a/z"},
        "timestamp": {"$gte": 10},
    }
    same = {"type": "and", "filters": [{"type": "eq", "key": "a", "value": 1}] * 2}
    assert autorag_to_vectorize(same) == {"a": {"$eq": 1}}


def test_autorag_conflicts_and_errors() -> None:
    conflict = {
        "type": "and",
        "filters": [{"type": "eq", "key": "a", "value": 1}, {"type": "eq", "key": "a", "value": 2}],
    }
    with pytest.raises(InvalidRequest, match="conflicting"):
        autorag_to_vectorize(conflict)
    with pytest.raises(InvalidRequest, match="'xor'"):
        autorag_to_vectorize({"type": "xor", "filters": []})
    with pytest.raises(InvalidRequest, match="'key'"):
        autorag_to_vectorize({"type": "eq", "value": 1})
    with pytest.raises(InvalidRequest, match="list 'filters'"):
        autorag_to_vectorize({"type": "and"})
    with pytest.raises(InvalidRequest, match=r"'\.'"):
        autorag_to_vectorize({"type": "eq", "key": "a.b", "value": 1})


def test_autorag_or_becomes_in() -> None:
    f = {
        "type": "or",
        "filters": [
            {"type": "eq", "key": "folder", "value": "a/"},
            {"type": "eq", "key": "folder", "value": "b/"},
        ],
    }
    assert autorag_to_vectorize(f) == {"folder": {"$in": ["a/", "b/"]}}
    bad_ops = {
        "type": "or",
        "filters": [
            {"type": "eq", "key": "folder", "value": "a/"},
            {"type": "gt", "key": "folder", "value": "b/"},
        ],
    }
    two_keys = {
        "type": "or",
        "filters": [
            {"type": "eq", "key": "folder", "value": "a/"},
            {"type": "eq", "key": "ts", "value": 1},
        ],
    }
    for bad in (bad_ops, two_keys, {"type": "or", "filters": []}):
        with pytest.raises(InvalidRequest, match=r"or.*only over eq on one key"):
            autorag_to_vectorize(bad)


def test_parse_filter_detects_syntax() -> None:
    assert parse_filter(None) is None
    assert parse_filter({"type": "eq", "key": "a", "value": 1}) == {"a": {"$eq": 1}}
    assert parse_filter({"type": "pdf"}) == {"type": {"$eq": "pdf"}}
    assert parse_filter({"type": {"$ne": "pdf"}}) == {"type": {"$ne": "pdf"}}
    assert parse_filter({"a": {"$gt": 1}}) == {"a": {"$gt": 1}}
    with pytest.raises(InvalidRequest):
        parse_filter("folder = x")
    with pytest.raises(InvalidRequest, match="unknown filter type 'like'"):
        parse_filter({"type": "like", "key": "folder", "value": "a"})
    with pytest.raises(InvalidRequest, match="unknown filter type 'not'"):
        parse_filter({"type": "not", "filters": []})
    assert parse_filter({"type": "pdf", "key": "k"}) == {
        "type": {"$eq": "pdf"},
        "key": {"$eq": "k"},
    }


def test_column_agrees_with_matches() -> None:
    rng = np.random.default_rng(3)
    pool: list[Any] = ["a", "b", "ab", "", 0, 1, 2.5, -3, True, False, None]
    metas: list[dict[str, Any]] = []
    col = Column(4)
    col.grow(300)
    for i in range(300):
        meta = {} if rng.random() < 0.2 else {"f": pool[int(rng.integers(len(pool)))]}
        metas.append(meta)
        col.set(i, meta.get("f"), value_kind(meta["f"]) if "f" in meta else MISSING)
    col.move(5, 6)
    metas[6] = metas[5]
    ops = ("$eq", "$ne", "$lt", "$lte", "$gt", "$gte")
    for op in ops:
        for want in pool:
            if want is None and op not in ("$eq", "$ne"):
                continue
            f = validate_filter({"f": {op: want}})
            expect = [matches(md, f) for md in metas]
            assert col.eval(op, want, 300).tolist() == expect, (op, want)
    for op in ("$in", "$nin"):
        f = validate_filter({"f": {op: ["a", 1, True]}})
        assert col.eval(op, ["a", 1, True], 300).tolist() == [matches(md, f) for md in metas]


def test_column_string_vocabulary_compacts() -> None:
    col = Column(8)
    metas: list[dict[str, Any]] = [{} for _ in range(8)]
    for i in range(3000):
        v: Any = f"s{i:04d}" if i % 5 else i
        col.set(i % 8, v, value_kind(v))
        metas[i % 8] = {"f": v}
    col.set(7, None, MISSING)
    metas[7] = {}
    for op in ("$lt", "$gte", "$eq", "$ne"):
        f = validate_filter({"f": {op: "s2995"}})
        assert col.eval(op, "s2995", 8).tolist() == [matches(md, f) for md in metas]
    assert len(col.vocab) <= 8
    assert Column(4).eval("$lt", "x", 0).tolist() == []
