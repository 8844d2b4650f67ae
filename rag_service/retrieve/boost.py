"""AI Search's relevance boosting (`boost_by`): after retrieval and before reranking, each
candidate's score gains an amount from its metadata, so recent or high-priority chunks move up
within what was retrieved (boosting never brings in a chunk the search did not find).

Per field: `desc` adds BOOST_WEIGHT x the value's place between the lowest and highest value
among the candidates (the highest gets the whole weight, the lowest none; when all are alike, each
gets half), `asc` the reverse; dates are placed over at least a day, so files written seconds
apart gain nearly the same. `exists` adds BOOST_WEIGHT when the chunk has the field, `not_exists`
when it has not. A chunk without the field gains nothing from `asc`/`desc`. Cloudflare does not
publish its weight; 0.1 per field moves a chunk past others within 0.1 of its score (cosine, or
the fused score scaled to 0-1) and no further."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rag_service.errors import InvalidRequest
from rag_service.providers.protocols import MetadataValue

BOOST_WEIGHT = 0.1
MAX_BOOSTS = 3
Direction = Literal["asc", "desc", "exists", "not_exists"]
FieldType = Literal["text", "number", "boolean", "datetime"]
BUILT_IN: Mapping[str, FieldType] = {"timestamp": "datetime"}
DATE_SPREAD_S = 86_400.0  # dates closer than a day apart hardly differ in a boost


@dataclass(frozen=True)
class Boost:
    field: str
    direction: Direction
    min_spread: float = 0.0  # values are placed over at least this range (dates: a day)


def resolve_boosts(
    requested: Sequence[tuple[str, Direction | None]], fields: Mapping[str, FieldType]
) -> tuple[Boost, ...]:
    """Check `requested` (field, direction) pairs against the instance's custom metadata
    `fields` (plus timestamp) and fill in AI Search's default directions: asc for numbers and
    dates, exists for text and booleans."""
    if len(requested) > MAX_BOOSTS:
        raise InvalidRequest(f"boost_by takes at most {MAX_BOOSTS} fields")
    known = {**fields, **BUILT_IN}
    by_lower = {field.lower(): field for field in known}  # field names are case-insensitive
    boosts: list[Boost] = []
    for asked, direction in requested:
        name = by_lower.get(asked.lower(), asked)
        kind = known.get(name)
        if kind is None:
            raise InvalidRequest(
                f"boost_by field {name!r} is neither 'timestamp' nor a custom_metadata "
                "field of this instance"
            )
        if any(b.field == name for b in boosts):
            raise InvalidRequest(f"boost_by names {name!r} twice: each field once")
        ordered = kind in ("number", "datetime")
        if direction in ("asc", "desc") and not ordered:
            raise InvalidRequest(
                f"boost_by field {name!r} is {kind}: use 'exists' or 'not_exists' "
                "('asc' and 'desc' need a number or datetime field)"
            )
        spread = DATE_SPREAD_S if kind == "datetime" else 0.0
        boosts.append(Boost(name, direction or ("asc" if ordered else "exists"), spread))
    return tuple(boosts)


def boost_amounts(
    metadata: Sequence[Mapping[str, MetadataValue]], boosts: Sequence[Boost]
) -> list[float]:
    """What each candidate gains, in the candidates' order."""
    amounts = [0.0] * len(metadata)
    for boost in boosts:
        values = [m.get(boost.field) for m in metadata]
        if boost.direction in ("exists", "not_exists"):
            want = boost.direction == "exists"
            for i, value in enumerate(values):
                if (value is not None and value != "") == want:
                    amounts[i] += BOOST_WEIGHT
            continue
        numbers = [_number(v) for v in values]
        present = [n for n in numbers if n is not None]
        if not present:
            continue
        low, high = min(present), max(present)
        middle, spread = (low + high) / 2, max(high - low, boost.min_spread)
        for i, n in enumerate(numbers):
            if n is None:
                continue
            place = 0.5 + (n - middle) / spread if spread > 0 else 0.5
            amounts[i] += BOOST_WEIGHT * (place if boost.direction == "desc" else 1.0 - place)
    return amounts


def _number(value: MetadataValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
