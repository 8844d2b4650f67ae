"""Vectorize-style metadata filters: validation, AutoRAG translation, reference semantics."""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from rag_service.errors import InvalidRequest

NormFilter = dict[str, dict[str, Any]]

EQ_OPS = ("$eq", "$ne")
SET_OPS = ("$in", "$nin")
RANGE_OPS = ("$lt", "$lte", "$gt", "$gte")
OPS = EQ_OPS + SET_OPS + RANGE_OPS
COMPARISON_TYPES = ("eq", "ne", "gt", "gte", "lt", "lte")
COMPOUND_TYPES = ("and", "or")
AUTORAG_TYPES = COMPARISON_TYPES + COMPOUND_TYPES
MAX_DEPTH = 32  # compound filters within compound filters
MAX_FIELD_CHARS = 512  # Vectorize's limit on a metadata key
FILTERABLE_BYTES = 64  # Vectorize indexes the first 64 bytes of a string value
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's control characters (category Cc)
_MISSING = object()
MISSING, NULL, BOOL, NUM, STR, OTHER = range(6)
_RANGE = {"$lt": np.less, "$lte": np.less_equal, "$gt": np.greater, "$gte": np.greater_equal}
BoolArray = npt.NDArray[np.bool_]
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _shown(value: object) -> str:
    """Client data for a message: shortened."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def indexed(value: Any) -> Any:
    """What a filter compares of a metadata value, as Vectorize indexes it: a string's first
    64 bytes of UTF-8 (cut at a character boundary); any other value whole."""
    if not isinstance(value, str) or len(value) <= FILTERABLE_BYTES // 4:
        return value
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= FILTERABLE_BYTES:
        return value
    cut = FILTERABLE_BYTES
    while data[cut] & 0xC0 == 0x80:  # a continuation byte: back to its character's start
        cut -= 1
    return data[:cut].decode("utf-8", "surrogatepass")


def _scalar_problem(v: object) -> str | None:
    """What is wrong with `v` as a filter's value, or None: a value is a boolean, a finite
    number (a double, as Vectorize stores numbers) or a string free of control characters."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        try:
            if math.isfinite(float(v)):
                return None
        except OverflowError:
            pass
        shown = f"float {v}" if isinstance(v, float) else f"an int of {len(str(abs(v)))} digits"
        return f"numbers must be finite and at most about 1.8e308, got {shown}"
    if isinstance(v, str):
        return "strings must not hold control characters" if _CONTROL.search(v) else None
    return f"got {type(v).__name__}"


def _check_field(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidRequest(
            f"filter field names must be non-empty strings, got {_shown(name)} "
            f"({type(name).__name__})"
        )
    if len(name) > MAX_FIELD_CHARS:
        raise InvalidRequest(
            f"filter field {_shown(name)} is invalid: longer than {MAX_FIELD_CHARS} characters"
        )
    if "." in name or '"' in name or name.startswith("$"):
        raise InvalidRequest(
            f"filter field {name!r} is invalid: field names must not contain '.' or '\"' "
            "nor start with '$'"
        )
    if _CONTROL.search(name):
        raise InvalidRequest(f"filter field {name!r} is invalid: it holds a control character")
    return name


def _check_value(field: str, op: str, v: object) -> Any:
    if isinstance(v, Mapping):
        raise InvalidRequest(
            f"filter on {field!r} is nested too deeply: {op} takes a value, not an object"
        )
    if op in SET_OPS:
        if not isinstance(v, list | tuple) or not v:
            raise InvalidRequest(f"filter {field}.{op} takes a non-empty list of values")
        for x in v:
            if problem := _scalar_problem(x):
                raise InvalidRequest(
                    f"filter {field}.{op} list items must be strings, numbers or booleans: "
                    f"{problem}"
                )
        return [indexed(x) for x in v]
    if isinstance(v, list | tuple):
        raise InvalidRequest(f"filter {field}.{op} takes a single value; use $in for a list")
    if v is None and op in EQ_OPS:
        return None
    if problem := _scalar_problem(v):
        allowed = "a string, number, boolean or null" if op in EQ_OPS else "a string or number"
        raise InvalidRequest(f"filter {field}.{op} takes {allowed}: {problem}")
    return indexed(v)


def validate_filter(f: object) -> NormFilter:
    """Normalise a Vectorize map to `{field: {op: value}}`; InvalidRequest says what to fix."""
    if not isinstance(f, Mapping):
        raise InvalidRequest("filter must be an object mapping field names to conditions")
    out: NormFilter = {}
    for name, cond in f.items():
        field = _check_field(name)
        if not isinstance(cond, Mapping):
            cond = {"$eq": cond}
        if not cond:
            raise InvalidRequest(
                f"filter on {field!r} has no operator; use one of {', '.join(OPS)}"
            )
        ops: dict[str, Any] = {}
        for op, v in cond.items():
            if op not in OPS:
                raise InvalidRequest(
                    f"unknown filter operator {_shown(op)} on {field!r}; allowed: {', '.join(OPS)}"
                )
            ops[op] = _check_value(field, op, v)
        out[field] = ops
    return out


def _add(out: NormFilter, key: str, op: str, value: Any) -> None:
    ops = out.setdefault(key, {})
    if op in ops and ops[op] != value:
        raise InvalidRequest(
            f"conflicting filters on {_shown(key)}: {op} {_shown(ops[op])} and {_shown(value)}; "
            "keep only one"
        )
    ops[op] = value


def _translate(obj: object, out: NormFilter, depth: int = 1) -> None:
    if not isinstance(obj, Mapping):
        raise InvalidRequest("each filter must be an object with a 'type'")
    if depth > MAX_DEPTH:
        raise InvalidRequest(
            f"the filter is nested too deeply: compound filters go at most {MAX_DEPTH} levels deep"
        )
    kind = obj.get("type")
    if kind in COMPARISON_TYPES:
        key, value = obj.get("key"), obj.get("value", _MISSING)
        if not isinstance(key, str) or value is _MISSING:
            raise InvalidRequest(f"comparison filter {kind!r} needs a string 'key' and a 'value'")
        _add(out, key, f"${kind}", value)
    elif kind in COMPOUND_TYPES:
        members = obj.get("filters")
        if not isinstance(members, list):
            raise InvalidRequest(f"compound filter {kind!r} needs a list 'filters'")
        if kind == "and":
            for m in members:
                _translate(m, out, depth + 1)
            return
        eq_only = all(isinstance(m, Mapping) and m.get("type") == "eq" for m in members)
        if not members or not eq_only:
            raise InvalidRequest(
                "compound 'or' filters are supported only over eq on one key (becomes $in)"
            )
        keys = [m.get("key") for m in members]
        if not all(isinstance(k, str) for k in keys) or any("value" not in m for m in members):
            raise InvalidRequest("comparison filter 'eq' needs a string 'key' and a 'value'")
        if len(set(keys)) != 1:
            raise InvalidRequest(
                "compound 'or' filters are supported only over eq on one key (becomes $in)"
            )
        _add(out, keys[0], "$in", [m["value"] for m in members])
    else:
        raise InvalidRequest(
            f"unknown filter type {_shown(kind)}; allowed: {', '.join(AUTORAG_TYPES)}"
        )


def autorag_to_vectorize(obj: object) -> NormFilter:
    """Translate an AutoRAG/OpenAI filter (comparison or and/or compound) to a Vectorize map."""
    out: NormFilter = {}
    _translate(obj, out)
    return validate_filter(out)


def _looks_autorag(obj: Mapping[str, Any]) -> bool:
    kind = obj.get("type")
    if kind in AUTORAG_TYPES:
        return True
    shaped = "filters" in obj or ("key" in obj and "value" in obj)
    return isinstance(kind, str) and shaped and set(obj) <= {"type", "key", "value", "filters"}


def parse_filter(obj: object) -> NormFilter | None:
    """Accept None, an AutoRAG filter object or a Vectorize map; return the normalised map.

    AutoRAG syntax is recognised by a known `type`, or by the shape `{type, key, value}` /
    `{type, filters}` (so an unknown type like "like" is reported, not read as field names).
    """
    if obj is None:
        return None
    if isinstance(obj, Mapping) and _looks_autorag(obj):
        return autorag_to_vectorize(obj)
    return validate_filter(obj)


def value_kind(v: object) -> int:
    """Type class of a metadata value; values compare only within one class."""
    if v is None:
        return NULL
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int | float):
        return NUM
    return STR if isinstance(v, str) else OTHER


def _eq(have: object, want: object) -> bool:
    k = value_kind(have)
    return k != OTHER and k == value_kind(want) and have == want


def _cmp(have: object, op: str, want: object) -> bool:
    k = value_kind(have)
    if k not in (NUM, STR) or k != value_kind(want):
        return False
    a: Any = have
    if op == "$lt":
        return bool(a < want)
    if op == "$lte":
        return bool(a <= want)
    if op == "$gt":
        return bool(a > want)
    return bool(a >= want)


def _op(have: object, op: str, want: Any) -> bool:
    if op == "$ne":
        return have is _MISSING or not _eq(have, want)
    if op == "$nin":
        return have is _MISSING or not any(_eq(have, w) for w in want)
    if have is _MISSING:
        return False
    if op == "$eq":
        return _eq(have, want)
    if op == "$in":
        return any(_eq(have, w) for w in want)
    return _cmp(have, op, want)


def matches(metadata: Mapping[str, Any], f: NormFilter) -> bool:
    """Reference semantics of a normalised filter over one metadata mapping (strings compared
    on what is indexed of them)."""
    return all(
        _op(indexed(metadata.get(field, _MISSING)), op, want)
        for field, ops in f.items()
        for op, want in ops.items()
    )


class Column:
    """One metadata field over many rows as typed arrays, for a vectorised `matches`.

    Strings are dictionary-coded (`code` indexes `vocab`), so a range op costs one Python
    comparison per distinct string plus a numpy gather.
    """

    def __init__(self, cap: int) -> None:
        self.kind = np.full(cap, MISSING, np.int8)
        self.num = np.zeros(cap, np.float64)
        self.code = np.full(cap, -1, np.int64)
        self.vocab: list[str] = []
        self._codes: dict[str, int] = {}

    def _code(self, s: str) -> int:
        c = self._codes.get(s)
        if c is None:
            c = self._codes[s] = len(self.vocab)
            self.vocab.append(s)
        return c

    def grow(self, cap: int) -> None:
        extra = cap - len(self.kind)
        self.kind = np.concatenate([self.kind, np.full(extra, MISSING, np.int8)])
        self.num = np.concatenate([self.num, np.zeros(extra, np.float64)])
        self.code = np.concatenate([self.code, np.full(extra, -1, np.int64)])

    def set(self, pos: int, v: Any, kind: int) -> None:
        self.kind[pos] = kind
        self.num[pos] = float(v) if kind in (BOOL, NUM) else 0.0
        self.code[pos] = self._code(indexed(v)) if kind == STR else -1

    def set_many(self, pos: npt.NDArray[np.int64], kinds: list[int], values: Sequence[Any]) -> None:
        k = np.array(kinds, np.int8)
        self.kind[pos] = k
        numeric = np.flatnonzero((k == BOOL) | (k == NUM))
        self.num[pos[numeric]] = [float(values[i]) for i in numeric.tolist()]
        strings = np.flatnonzero(k == STR)
        self.code[pos[strings]] = [self._code(indexed(values[i])) for i in strings.tolist()]

    def move(self, src: int, dst: int) -> None:
        self.kind[dst] = self.kind[src]
        self.num[dst] = self.num[src]
        self.code[dst] = self.code[src]

    def _compact(self, n: int) -> None:
        live, self.code[:n] = np.unique(self.code[:n], return_inverse=True)
        self.code[:n] -= int(len(live) > 0 and live[0] < 0)
        self.code[n:] = -1  # rows past n are unused until `set` again
        self.vocab = [self.vocab[c] for c in live.tolist() if c >= 0]
        self._codes = {v: i for i, v in enumerate(self.vocab)}

    def _eq(self, want: Any, n: int) -> BoolArray:
        k = value_kind(want)
        if k == STR:
            c = self._codes.get(want, -2)
            return np.asarray(self.code[:n] == c, dtype=np.bool_)
        if k == NULL:
            return np.asarray(self.kind[:n] == NULL, dtype=np.bool_)
        return np.asarray((self.kind[:n] == k) & (self.num[:n] == want), dtype=np.bool_)

    def eval(self, op: str, want: Any, n: int) -> BoolArray:
        """The rows `0..n-1` for which `field op want` holds, as `matches` defines it."""
        if op in EQ_OPS:
            m = self._eq(want, n)
            return m if op == "$eq" else ~m
        if op in SET_OPS:
            m = np.zeros(n, bool)
            for w in want:
                m |= self._eq(w, n)
            return m if op == "$in" else ~m
        k = value_kind(want)
        if k == NUM:
            return np.asarray((self.kind[:n] == NUM) & _RANGE[op](self.num[:n], want), np.bool_)
        if k != STR:
            return np.zeros(n, bool)
        if len(self.vocab) > 2 * n + 1024:
            self._compact(n)
        lut = np.array([_cmp(v, op, want) for v in self.vocab] + [False], dtype=np.bool_)
        return lut[self.code[:n]]
