"""What one query asks for, and the plan it makes with the instance's settings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rag_service.instances import BoostField, InstanceConfig
from rag_service.providers.filters import NormFilter, parse_filter
from rag_service.retrieve.cache import CacheThreshold
from rag_service.retrieve.rerank import RerankOptions
from rag_service.retrieve.search import RetrievalOptions, RetrievalType


@dataclass(frozen=True)
class QueryOptions:
    """A request's choices; None leaves the instance's setting in force."""

    retrieval_type: RetrievalType | None = None
    fusion_method: Literal["rrf", "max"] | None = None
    keyword_match_mode: Literal["and", "or"] | None = None
    match_threshold: float | None = None
    max_num_results: int | None = None
    filters: NormFilter | None = None
    boost_by: Sequence[BoostField] | None = None  # [] turns the instance's boosts off
    context_expansion: int = 0
    rewrite: bool | None = None
    rewrite_model: str | None = None
    rewrite_prompt: str | None = None
    split_exclusions: bool | None = None  # ragd's: retrieve without "... but don't mention X"
    reranking: bool | None = None
    reranking_model: str | None = None
    reranking_threshold: float | None = None
    cache: bool | None = None
    cache_threshold: CacheThreshold | None = None


# The request's fields that override the instance's retrieval settings one to one.
RETRIEVAL_OVERRIDES = (
    "retrieval_type",
    "fusion_method",
    "keyword_match_mode",
    "match_threshold",
    "max_num_results",
    "filters",
)


@dataclass(frozen=True)
class RewriteOptions:
    model: str | None = None  # None: the instance's rewrite_model, else the answer model
    prompt: str | None = None  # None: the default rewrite prompt


@dataclass(frozen=True)
class Plan:
    """What the query path runs for one request (None: that stage is off)."""

    retrieval: RetrievalOptions
    context_expansion: int = 0
    rewrite: RewriteOptions | None = None
    reranking: RerankOptions | None = None
    cache: CacheThreshold | None = None
    split_exclusions: bool = False


def retrieval_options(cfg: InstanceConfig, **overrides: Any) -> RetrievalOptions:
    """The instance's retrieval settings with overrides (None = keep)."""
    method = cfg.index_method
    kind = (
        "hybrid" if method.vector and method.keyword else "vector" if method.vector else "keyword"
    )
    base: dict[str, Any] = {
        "retrieval_type": kind,
        "fusion_method": cfg.fusion_method,
        "match_threshold": cfg.score_threshold,
        "max_num_results": cfg.max_num_results,
        "boost_by": cfg.boosts(),
        "keyword_match_mode": cfg.retrieval_options.keyword_match_mode,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return RetrievalOptions(**base)


def plan_query(cfg: InstanceConfig, o: QueryOptions) -> Plan:
    """The request's options over the instance's settings."""
    overrides = {name: getattr(o, name) for name in RETRIEVAL_OVERRIDES}
    boosts = None if o.boost_by is None else cfg.boosts(o.boost_by)
    retrieval = retrieval_options(cfg, **overrides, boost_by=boosts)
    return Plan(
        retrieval,
        o.context_expansion,
        rewrite=RewriteOptions(o.rewrite_model or cfg.rewrite_model or None, o.rewrite_prompt)
        if _enabled(o.rewrite, cfg.rewrite_query)
        else None,
        reranking=RerankOptions(o.reranking_model or None, o.reranking_threshold or 0.0)
        if _enabled(o.reranking, cfg.reranking)
        else None,
        cache=(o.cache_threshold or cfg.cache_threshold) if _enabled(o.cache, cfg.cache) else None,
        split_exclusions=_enabled(o.split_exclusions, cfg.split_exclusions),
    )


def _enabled(requested: bool | None, instance_default: bool) -> bool:
    """A request's `enabled` wins; left out, the instance's setting applies."""
    return instance_default if requested is None else requested


def request_filter(obj: object) -> NormFilter | None:
    """Either filter syntax; `timestamp` values given in milliseconds (as AutoRAG and AI Search
    document them, sometimes as strings) become the index's seconds."""
    parsed = parse_filter(obj) if obj else None
    if parsed and "timestamp" in parsed:
        parsed["timestamp"] = {
            op: [_seconds(v) for v in want] if isinstance(want, list) else _seconds(want)
            for op, want in parsed["timestamp"].items()
        }
    return parsed


def _seconds(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,20}\s*", value):
        value = int(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 1e11:
        return int(value // 1000)
    return value
