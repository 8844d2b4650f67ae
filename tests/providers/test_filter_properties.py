"""Hypothesis properties of the metadata filter parser: anything a client can send is either a
normalised filter or an InvalidRequest; valid filters round-trip through both syntaxes; and
`matches` (and its vectorised Column) agree with a brute-force reading of the semantics."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag_service.errors import InvalidRequest
from rag_service.providers.filters import (
    AUTORAG_TYPES,
    MAX_DEPTH,
    MISSING,
    OPS,
    RANGE_OPS,
    SET_OPS,
    Column,
    NormFilter,
    autorag_to_vectorize,
    matches,
    parse_filter,
    validate_filter,
    value_kind,
)

# Derandomised, so that CI is reproducible (the same examples each run); run with more examples
# and without `derandomize` to look further.
SETTINGS = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- Anything JSON (and a little more, as Python callers may pass) ---------------------------

texts = st.text(max_size=12) | st.sampled_from(["", "a", "folder", "$eq", "type", "\x00", "a.b"])
numbers = (
    st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
)
scalars = st.none() | st.booleans() | numbers | texts
keys = texts | st.sampled_from(["type", "key", "value", "filters", *OPS, *AUTORAG_TYPES])
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
odd_keys = st.integers() | st.none() | st.tuples(st.integers()) | st.booleans()
python_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(keys | odd_keys, inner, max_size=3)
        | st.tuples(inner)
    ),
    max_leaves=12,
)


@st.composite
def autorag_like(draw: st.DrawFn, depth: int = 0) -> Any:
    """AutoRAG-shaped objects, valid or nearly: right keys, any values."""
    kind = draw(st.sampled_from(AUTORAG_TYPES) | json_like)
    obj: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        obj["key"] = draw(st.sampled_from(["folder", "ts", "a.b", ""]) | json_like)
    if draw(st.booleans()):
        obj["value"] = draw(json_like)
    if depth < 3 and draw(st.booleans()):
        obj["filters"] = draw(st.lists(autorag_like(depth + 1), max_size=3) | json_like)
    return obj


def nested(levels: int) -> dict[str, Any]:
    f: dict[str, Any] = {"type": "eq", "key": "a", "value": 1}
    for _ in range(levels):
        f = {"type": "and", "filters": [f]}
    return f


def assert_normalised(f: NormFilter) -> None:
    assert isinstance(f, dict)
    for field, ops in f.items():
        assert isinstance(field, str) and field and "." not in field
        assert isinstance(ops, dict) and ops and set(ops) <= set(OPS)
        for op, want in ops.items():
            values = want if op in SET_OPS else [want]
            assert isinstance(values, list) and values
            for v in values:
                assert v is None or isinstance(v, bool | int | float | str), (op, v)
                if isinstance(v, float):
                    assert math.isfinite(v)
                if isinstance(v, int) and not isinstance(v, bool):
                    assert math.isfinite(float(v))
                if isinstance(v, str):
                    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in v)


def parses_or_refuses(obj: Any) -> None:
    for parse in (parse_filter, validate_filter, autorag_to_vectorize):
        try:
            out = parse(obj)
        except InvalidRequest as exc:
            assert exc.message and "\n" not in exc.message and len(exc.message) < 600
        else:
            if out is not None:
                assert_normalised(out)
                assert validate_filter(out) == out  # normalised is a fixed point


@SETTINGS
@given(json_like)
def test_any_json_parses_or_is_refused(obj: Any) -> None:
    parses_or_refuses(obj)


@SETTINGS
@given(st.dictionaries(keys | odd_keys, python_like, max_size=4) | python_like)
def test_any_python_value_parses_or_is_refused(obj: Any) -> None:
    parses_or_refuses(obj)


@SETTINGS
@given(autorag_like())
def test_any_autorag_shape_parses_or_is_refused(obj: Any) -> None:
    parses_or_refuses(obj)


def test_depth_limit() -> None:
    assert parse_filter(nested(MAX_DEPTH - 1)) == {"a": {"$eq": 1}}
    for levels in (MAX_DEPTH, 900, 5000):  # far past Python's recursion limit too
        try:
            parse_filter(nested(levels))
        except InvalidRequest as exc:
            assert "nested too deeply" in exc.message
        else:
            raise AssertionError(levels)


# --- Valid filters ---------------------------------------------------------------------------

FIELDS = ("folder", "ts", "score", "ok", "type", "key")
strings = st.text(alphabet="ab/-", max_size=3)
finite = st.integers(-(2**53), 2**53) | st.floats(-1e6, 1e6, allow_nan=False)
values = st.booleans() | finite | strings


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    ops = draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=3, unique=True))
    cond: dict[str, Any] = {}
    for op in ops:
        if op in SET_OPS:
            cond[op] = draw(st.lists(values, min_size=1, max_size=4))
        elif op in RANGE_OPS:
            cond[op] = draw(finite | strings)
        else:
            cond[op] = draw(st.none() | values)
    return cond


valid_filters = st.dictionaries(st.sampled_from(FIELDS), conditions(), max_size=4)


def as_autorag(f: NormFilter) -> dict[str, Any]:
    """The same filter in AutoRAG syntax ($in becomes an `or` of `eq`s; $nin has no spelling)."""
    members: list[dict[str, Any]] = []
    for field, ops in f.items():
        for op, want in ops.items():
            if op == "$in":
                eqs = [{"type": "eq", "key": field, "value": v} for v in want]
                members.append({"type": "or", "filters": eqs})
            else:
                members.append({"type": op[1:], "key": field, "value": want})
    return {"type": "and", "filters": members}


@SETTINGS
@given(valid_filters)
def test_valid_filters_round_trip(f: NormFilter) -> None:
    assert validate_filter(f) == f
    assert parse_filter(f) == (f or {})
    without_nin = {k: {op: v for op, v in ops.items() if op != "$nin"} for k, ops in f.items()}
    without_nin = {k: ops for k, ops in without_nin.items() if ops}
    assert autorag_to_vectorize(as_autorag(without_nin)) == without_nin
    assert parse_filter(as_autorag(without_nin)) == without_nin


# --- Semantics -------------------------------------------------------------------------------


def kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    return "number" if isinstance(v, int | float) else "string"


def holds(meta: dict[str, Any], field: str, op: str, want: Any) -> bool:
    """One condition by the book: values compare only within one type (booleans are not
    numbers); a missing field is unequal to everything and in no range."""
    present, have = field in meta, meta.get(field)

    def equal(w: Any) -> bool:
        return present and kind(have) == kind(w) and have == w

    if op == "$eq":
        return equal(want)
    if op == "$ne":
        return not equal(want)
    if op == "$in":
        return any(equal(w) for w in want)
    if op == "$nin":
        return not any(equal(w) for w in want)
    if not present or kind(have) != kind(want) or kind(want) not in ("number", "string"):
        return False
    return bool(
        {
            "$lt": have < want,
            "$lte": have <= want,
            "$gt": have > want,
            "$gte": have >= want,
        }[op]
    )


metadata = st.dictionaries(st.sampled_from(FIELDS), st.none() | values, max_size=len(FIELDS))


@SETTINGS
@given(valid_filters, st.lists(metadata, min_size=1, max_size=8))
def test_matches_agrees_with_brute_force(f: NormFilter, rows: list[dict[str, Any]]) -> None:
    for meta in rows:
        expect = all(
            holds(meta, fld, op, want) for fld, ops in f.items() for op, want in ops.items()
        )
        assert matches(meta, f) is expect, (meta, f)


@SETTINGS
@given(valid_filters, st.lists(metadata, min_size=1, max_size=12))
def test_column_agrees_with_brute_force(f: NormFilter, rows: list[dict[str, Any]]) -> None:
    n = len(rows)
    for field, ops in f.items():
        col = Column(n)
        for pos, meta in enumerate(rows):
            v = meta.get(field)
            col.set(pos, v, value_kind(v) if field in meta else MISSING)
        for op, want in ops.items():
            expect = [holds(meta, field, op, want) for meta in rows]
            assert col.eval(op, want, n).tolist() == expect, (field, op, want, rows)
