"""boost_by's amounts against hand-computed cases, and its checks."""

from __future__ import annotations

import pytest

from rag_service.errors import InvalidRequest
from rag_service.instances import BoostField
from rag_service.retrieve.boost import BOOST_WEIGHT, Boost, boost_amounts, resolve_boosts

W = BOOST_WEIGHT
CANDIDATES = [{"priority": 1}, {"priority": 3}, {}, {"priority": 2, "team": "docs"}]


@pytest.mark.parametrize(
    ("boosts", "expected"),
    [
        ([Boost("priority", "desc")], [0.0, W, 0.0, W / 2]),
        ([Boost("priority", "asc")], [W, 0.0, 0.0, W / 2]),
        ([Boost("team", "exists")], [0.0, 0.0, 0.0, W]),
        ([Boost("team", "not_exists")], [W, W, W, 0.0]),
        ([Boost("priority", "desc"), Boost("team", "exists")], [0.0, W, 0.0, W * 1.5]),
        ([Boost("missing", "desc")], [0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_amounts(boosts: list[Boost], expected: list[float]) -> None:
    assert boost_amounts(CANDIDATES, boosts) == pytest.approx(expected)


def test_equal_values_each_get_half_and_booleans_are_not_numbers() -> None:
    assert boost_amounts([{"n": 5}, {"n": 5}], [Boost("n", "asc")]) == [W / 2, W / 2]
    assert boost_amounts([{"n": True}, {"n": 2}], [Boost("n", "desc")]) == [0.0, W / 2]


def test_dates_seconds_apart_gain_nearly_the_same() -> None:
    day = 86_400
    close = [{"timestamp": 1_000_000}, {"timestamp": 1_000_000 + day // 10}]
    newest = Boost("timestamp", "desc", min_spread=day)
    assert boost_amounts(close, [newest]) == pytest.approx([0.45 * W, 0.55 * W])
    far = [{"timestamp": 0}, {"timestamp": 10 * day}, {"timestamp": 5 * day}]
    assert boost_amounts(far, [newest]) == pytest.approx([0.0, W, W / 2])
    assert resolve_boosts([("timestamp", None)], {})[0].min_spread == day


def test_default_directions_follow_the_field_type() -> None:
    fields = {"priority": "number", "team": "text", "public": "boolean", "due": "datetime"}
    got = resolve_boosts([(f, None) for f in ("priority", "team", "public")], fields)
    assert [b.direction for b in got] == ["asc", "exists", "exists"]
    assert resolve_boosts([("due", None)], fields) == (Boost("due", "asc", 86_400.0),)
    assert resolve_boosts([("timestamp", None)], {}) == (Boost("timestamp", "asc", 86_400.0),)


@pytest.mark.parametrize(
    ("requested", "fragment"),
    [
        ([("author", None)], "neither 'timestamp'"),
        ([("team", "asc")], "is text"),
        ([("timestamp", "desc"), ("timestamp", "asc")], "twice"),
        ([("timestamp", None)] * 4, "at most 3"),
    ],
)
def test_mistakes(requested: list[tuple[str, None]], fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        resolve_boosts(requested, {"team": "text"})


def test_field_names_are_case_insensitive_and_reserved_names_refused() -> None:
    from pydantic import ValidationError

    from rag_service.instances import InstanceConfig

    cfg = InstanceConfig(custom_metadata=[{"field_name": "Author", "data_type": "text"}])
    assert [b.field for b in cfg.boosts([BoostField(field="author")])] == ["Author"]
    assert [b.field for b in cfg.boosts([BoostField(field="TIMESTAMP")])] == ["timestamp"]
    for fields, fragment in [
        ([{"field_name": "Folder", "data_type": "text"}], "reserved"),
        ([{"field_name": "a", "data_type": "text"}, {"field_name": "A", "data_type": "number"}],
         "twice"),
    ]:  # fmt: skip
        with pytest.raises(ValidationError, match=fragment):
            InstanceConfig(custom_metadata=fields)
