"""Fusion (issue 17): ties broken on evidence, never by chunk id; `max` on standardised scores."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rag_service.providers.protocols import Match
from rag_service.retrieve.search import fuse


def m(id_: str, score: float) -> Match:
    return Match(id_, score, {"text": id_, "filename": f"{id_}.md"})


def renamed(matches: list[Match], salt: str) -> list[Match]:
    """The same hits with ids as another instance name would derive them (an unrelated order)."""
    return [m(hashlib.sha1(f"{salt}/{x.id}".encode()).hexdigest(), x.score) for x in matches]


def order(fused: list, names: dict[str, str]) -> list[str]:
    return [names[c.id] for c in fused]


@pytest.mark.parametrize("method", ["rrf", "max"])
def test_the_same_lists_under_other_ids_fuse_in_the_same_order(method: str) -> None:
    vector = [m("a", 0.62), m("b", 0.61), m("c", 0.40), m("d", 0.30)]
    keyword = [m("b", 14.0), m("a", 6.0), m("d", 5.0), m("e", 4.0)]
    orders = []
    for salt in ("", "instance-one", "instance-two", "other"):
        v, k = (renamed(x, salt) if salt else x for x in (vector, keyword))
        names = {r.id: o.id for r, o in zip(v + k, vector + keyword, strict=True)}
        orders.append(order(fuse(v, k, method), names))  # type: ignore[arg-type]
    assert all(o == orders[0] for o in orders)


def test_an_rrf_tie_goes_to_the_chunk_its_list_is_surer_of() -> None:
    # a is first for vector, b for keyword: 1/(k+1) + 1/(k+2) each. Vector barely separates
    # them; keyword puts b far ahead of everything else, so b wins, whatever the ids.
    vector = [m("a", 0.52), m("b", 0.51), m("c", 0.50), m("d", 0.49)]
    keyword = [m("b", 20.0), m("a", 4.0), m("c", 3.9), m("d", 3.8)]
    for first, second in (("a", "b"), ("z", "y")):
        names = {"a": first, "b": second, "c": "c", "d": "d"}

        def ren(xs: list[Match], names: dict[str, str] = names) -> list[Match]:
            return [m(names[x.id], x.score) for x in xs]

        fused = fuse(ren(vector), ren(keyword), "rrf")
        assert fused[0].score == pytest.approx(fused[1].score)  # a true rrf tie
        assert fused[0].id == names["b"]


def test_ids_decide_only_when_every_piece_of_evidence_is_equal() -> None:
    fused = fuse([m("b", 0.5), m("a", 0.5)], [m("a", 3.0), m("b", 3.0)], "rrf")
    assert [c.id for c in fused] == ["a", "b"]


@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12, unique=True),
    st.lists(st.floats(0.1, 30.0), min_size=1, max_size=12, unique=True),
    st.randoms(use_true_random=False),
    st.sampled_from(["rrf", "max"]),
)
def test_fused_order_never_depends_on_ids(
    vs: list[float], ks: list[float], rnd: random.Random, method: str
) -> None:
    """Random lists over overlapping chunks, with distinct scores within each list: every tie
    is settled by evidence, so renaming the chunks cannot change the order."""
    pool = [f"chunk-{i}" for i in range(16)]
    v_ids, k_ids = rnd.sample(pool, len(vs)), rnd.sample(pool, len(ks))
    vector = [m(i, s) for i, s in zip(v_ids, sorted(vs, reverse=True), strict=True)]
    keyword = [m(i, s) for i, s in zip(k_ids, sorted(ks, reverse=True), strict=True)]
    base = [c.id for c in fuse(vector, keyword, method)]  # type: ignore[arg-type]
    for salt in ("x", "y"):
        v, k = renamed(vector, salt), renamed(keyword, salt)
        names = {r.id: o.id for r, o in zip(v + k, vector + keyword, strict=True)}
        assert order(fuse(v, k, method), names) == base  # type: ignore[arg-type]


def test_max_lets_the_surer_list_lead() -> None:
    # keyword: one chunk stands far above the rest; vector: a flat list whose top is another
    flat = [m(f"v{i}", 0.60 - 0.002 * i) for i in range(40)]
    keyword = [m("k", 30.0)] + [m(f"v{i}", 5.0 - 0.05 * i) for i in range(1, 40)]
    fused = fuse(flat, keyword, "max")
    assert fused[0].id == "k" and fused[0].score == pytest.approx(1.0)
    assert all(0.0 <= c.score <= 1.0 for c in fused)
    assert fused[-1].score == pytest.approx(0.0)
    # and the other way round: a vector hit far above a flat keyword list leads
    standout = [m("v", 0.9)] + [m(f"k{i}", 0.3 - 0.001 * i) for i in range(39)]
    flat_kw = [m(f"k{i}", 10.0 - 0.01 * i) for i in range(40)]
    assert fuse(standout, flat_kw, "max")[0].id == "v"


def test_max_reads_a_short_keyword_list_against_the_chunks_that_do_not_match() -> None:
    """A keyword search that matches one chunk (every term, "and" mode) is strong evidence: its
    z-score is taken over as many positions as the vector search read, the rest scoring 0."""
    vector = [m(f"v{i}", 0.70 - 0.005 * i) for i in range(50)]
    fused = fuse(vector, [m("v30", 7.5)], "max")
    assert fused[0].id == "v30"
    # the vector order is kept below it
    assert [c.id for c in fused[1:4]] == ["v0", "v1", "v2"]


def test_max_frame_counts_vector_hits_below_the_threshold() -> None:
    """The vector z-scores are taken over every hit read, also those the match threshold then
    drops: two hits kept at 0.50 and 0.45 above a bulk at 0.30 stand out; alone, they would not."""
    kept = [m("a", 0.50), m("b", 0.45)]
    pool = [0.50, 0.45] + [0.30 - 0.001 * i for i in range(48)]
    keyword = [m("c", 9.0), m("b", 8.0), m("d", 7.9), m("e", 7.8)]
    assert fuse(kept, keyword, "max", vector_pool=pool)[0].id == "a"
    assert fuse(kept, keyword, "max")[0].id == "c"


@pytest.mark.parametrize("method", ["rrf", "max"])
def test_one_empty_list_keeps_the_other_lists_order(method: str) -> None:
    vector = [m("a", 0.9), m("b", 0.5), m("c", 0.4)]
    assert [c.id for c in fuse(vector, [], method)] == ["a", "b", "c"]  # type: ignore[arg-type]
    keyword = [m("x", 9.0), m("y", 3.0)]
    assert [c.id for c in fuse([], keyword, method)] == ["x", "y"]  # type: ignore[arg-type]
    assert fuse([], [], method) == []  # type: ignore[arg-type]


def test_max_of_equal_scores_is_well_defined() -> None:
    fused = fuse([m("a", 0.5), m("b", 0.5)], [m("c", 2.0)], "max")
    assert {c.id for c in fused} == {"a", "b", "c"}
    assert all(0.0 <= c.score <= 1.0 for c in fused)
