"""Vectorize-style metadata filters: validation, AutoRAG translation, reference semantics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rag_service.errors import InvalidRequest

NormFilter = dict[str, dict[str, Any]]

EQ_OPS = ("$eq", "$ne")
SET_OPS = ("$in", "$nin")
RANGE_OPS = ("$lt", "$lte", "$gt", "$gte")
OPS = EQ_OPS + SET_OPS + RANGE_OPS
COMPARISON_TYPES = ("eq", "ne", "gt", "gte", "lt", "lte")
COMPOUND_TYPES = ("and", "or")
AUTORAG_TYPES = COMPARISON_TYPES + COMPOUND_TYPES
_MISSING = object()


def _is_scalar(v: object) -> bool:
    return isinstance(v, str | int | float) and v == v  # bool is an int; NaN is refused


def _check_field(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidRequest("filter field names must be non-empty strings")
    if "." in name or '"' in name or name.startswith("$"):
        raise InvalidRequest(
            f"filter field {name!r} is invalid: field names must not contain '.' or '\"' "
            "nor start with '$'"
        )
    return name


def _check_value(field: str, op: str, v: object) -> Any:
    if isinstance(v, Mapping):
        raise InvalidRequest(
            f"filter on {field!r} is nested too deeply: {op} takes a value, not an object"
        )
    if op in SET_OPS:
        if not isinstance(v, list | tuple) or not v:
            raise InvalidRequest(f"filter {field}.{op} takes a non-empty list of values")
        if not all(_is_scalar(x) for x in v):
            raise InvalidRequest(
                f"filter {field}.{op} list items must be strings, numbers or booleans"
            )
        return list(v)
    if isinstance(v, list | tuple):
        raise InvalidRequest(f"filter {field}.{op} takes a single value; use $in for a list")
    if v is None and op in EQ_OPS:
        return None
    if not _is_scalar(v):
        allowed = "a string, number, boolean or null" if op in EQ_OPS else "a string or number"
        raise InvalidRequest(f"filter {field}.{op} takes {allowed}, got {type(v).__name__}")
    return v


def validate_filter(f: object) -> NormFilter:
    """Normalise a Vectorize filter map to `{field: {op: value}}`; InvalidRequest says what to fix."""
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
                    f"unknown filter operator {op!r} on {field!r}; allowed: {', '.join(OPS)}"
                )
            ops[op] = _check_value(field, op, v)
        out[field] = ops
    return out


def _add(out: NormFilter, key: str, op: str, value: Any) -> None:
    ops = out.setdefault(key, {})
    if op in ops and ops[op] != value:
        raise InvalidRequest(
            f"conflicting filters on {key!r}: {op} {ops[op]!r} and {value!r}; keep only one"
        )
    ops[op] = value


def _translate(obj: object, out: NormFilter) -> None:
    if not isinstance(obj, Mapping):
        raise InvalidRequest("each filter must be an object with a 'type'")
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
                _translate(m, out)
            return
        keys = {m.get("key") for m in members if isinstance(m, Mapping)}
        eq_only = all(isinstance(m, Mapping) and m.get("type") == "eq" for m in members)
        if not members or not eq_only or len(keys) != 1:
            raise InvalidRequest(
                "compound 'or' filters are supported only over eq on one key (becomes $in)"
            )
        key = keys.pop()
        if not isinstance(key, str) or any("value" not in m for m in members):
            raise InvalidRequest("comparison filter 'eq' needs a string 'key' and a 'value'")
        _add(out, key, "$in", [m["value"] for m in members])
    else:
        raise InvalidRequest(f"unknown filter type {kind!r}; allowed: {', '.join(AUTORAG_TYPES)}")


def autorag_to_vectorize(obj: object) -> NormFilter:
    """Translate an AutoRAG/OpenAI filter (comparison or and/or compound) to a Vectorize map."""
    out: NormFilter = {}
    _translate(obj, out)
    return validate_filter(out)


def parse_filter(obj: object) -> NormFilter | None:
    """Accept None, an AutoRAG filter object or a Vectorize map; return the normalised map."""
    if obj is None:
        return None
    if isinstance(obj, Mapping) and obj.get("type") in AUTORAG_TYPES:
        return autorag_to_vectorize(obj)
    return validate_filter(obj)


def _kind(v: object) -> int:
    """Type class for comparisons: 0 null, 1 bool, 2 number, 3 string, -1 other."""
    if v is None:
        return 0
    if isinstance(v, bool):
        return 1
    if isinstance(v, int | float):
        return 2
    return 3 if isinstance(v, str) else -1


def _eq(have: object, want: object) -> bool:
    k = _kind(have)
    return k >= 0 and k == _kind(want) and have == want


def _cmp(have: object, op: str, want: object) -> bool:
    k = _kind(have)
    if k not in (2, 3) or k != _kind(want):
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
    """Reference semantics of a normalised filter over one metadata mapping."""
    return all(
        _op(metadata.get(field, _MISSING), op, want)
        for field, ops in f.items()
        for op, want in ops.items()
    )
