"""Instance configuration: AI Search's fields, defaults and ranges."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rag_service.errors import InvalidRequest
from rag_service.models import Instance
from rag_service.namespaces import NAME
from rag_service.retrieve.boost import MAX_BOOSTS, Boost, Direction, resolve_boosts

SYNC_INTERVALS = (900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)
INSTANCE_ID = NAME  # fullmatch: no trailing newline


class IndexMethod(BaseModel):
    vector: bool = True
    keyword: bool = True


RESERVED_FIELDS = frozenset({"timestamp", "folder", "filename"})


class CustomMetadataField(BaseModel):
    field_name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    data_type: Literal["text", "number", "boolean", "datetime"]

    @field_validator("field_name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.lower() in RESERVED_FIELDS:
            raise ValueError(f"{name!r} is reserved (timestamp, folder and filename are built in)")
        return name


MAX_CUSTOM_FIELDS = 5  # declared per instance, so at most as many given per item
MAX_TEXT_CHARS = 500  # text values are kept up to this many characters (AI Search truncates)
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
CustomValue = str | float | bool


def _text(value: object) -> CustomValue:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value[:MAX_TEXT_CHARS]


def _boolean(value: object) -> CustomValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in BOOLEANS:
        return BOOLEANS[value.strip().lower()]
    raise ValueError("true or false (or 1, 0, yes, no)")


def _number(value: object) -> CustomValue:
    try:
        number = float(value) if isinstance(value, int | float | str) else math.nan
    except (ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError("a finite number")
    return number


def _datetime(value: object) -> CustomValue:
    """Epoch seconds of an ISO 8601 date and time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        when = None
    if not isinstance(value, str) or when is None:
        raise ValueError("an ISO 8601 date and time such as '2026-01-15T00:00:00Z'")
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


CUSTOM_TYPES: dict[str, Callable[[object], CustomValue]] = {
    "text": _text, "number": _number, "boolean": _boolean, "datetime": _datetime
}  # fmt: skip


def custom_value(data_type: str, value: object) -> CustomValue:
    """`value` as a custom metadata field of `data_type` keeps it; ValueError saying what the
    type takes."""
    return CUSTOM_TYPES[data_type](value)


def check_custom_metadata(
    declared: Sequence[CustomMetadataField], given: Mapping[str, object]
) -> dict[str, str]:
    """An item's custom metadata (an upload's `metadata`) checked against the instance's
    declared fields: names case-insensitive, none reserved or undeclared, at most five, each
    value of its field's type. The values come back as object metadata holds them (strings),
    under the declared names."""
    for name in given:
        if name.lower() in RESERVED_FIELDS:
            raise InvalidRequest(
                f"metadata field {name!r} is reserved: timestamp, folder and filename are built in"
            )
    if len(given) > MAX_CUSTOM_FIELDS:
        extra = ", ".join(repr(name) for name in list(given)[MAX_CUSTOM_FIELDS:])
        raise InvalidRequest(
            f"metadata has {len(given)} fields, at most {MAX_CUSTOM_FIELDS} are allowed: "
            f"drop {extra}"
        )
    fields = {f.field_name.lower(): f for f in declared}
    out: dict[str, str] = {}
    for name, value in given.items():
        spec = fields.get(name.lower())
        if spec is None:
            known = ", ".join(repr(f.field_name) for f in declared) or "none"
            raise InvalidRequest(
                f"metadata field {name!r} is not declared in the instance's custom_metadata "
                f"(declared: {known})"
            )
        if spec.field_name in out:
            raise InvalidRequest(
                f"metadata names field {name!r} twice (names are case-insensitive)"
            )
        try:
            custom_value(spec.data_type, value)
        except ValueError as exc:
            raise InvalidRequest(
                f"metadata field {name!r} is {spec.data_type}: give {exc}"
            ) from None
        out[spec.field_name] = value if isinstance(value, str) else json.dumps(value)
    return out


class BoostField(BaseModel):
    """One `boost_by` entry (see rag_service.retrieve.boost)."""

    field: str = Field(min_length=1)
    direction: Direction | None = None


class RetrievalSettings(BaseModel):
    """AI Search's instance `retrieval_options`: defaults for each request."""

    boost_by: list[BoostField] = Field(default_factory=list, max_length=MAX_BOOSTS)
    keyword_match_mode: Literal["and", "or"] = "and"  # AI Search's default: every term


class SourceParams(BaseModel):
    prefix: str = ""
    include_items: list[str] = Field(default_factory=list, max_length=10)
    exclude_items: list[str] = Field(default_factory=list, max_length=10)
    # An R2 bucket's jurisdiction ("eu", "fedramp"; "default" or none: the account's own).
    r2_jurisdiction: str | None = Field(None, pattern=r"^[a-z]{1,16}$")


class IndexingOptions(BaseModel):
    keyword_tokenizer: Literal["porter", "trigram"] = "porter"


class InstanceConfig(BaseModel):
    """What an instance is built from; defaults and ranges are AI Search's."""

    model_config = ConfigDict(extra="ignore")

    backend: Literal["local", "cloudflare"] = "local"
    type: Literal["r2", "folder", "s3"] | None = None
    source_params: SourceParams = Field(default_factory=SourceParams)
    chunk: bool = True
    chunk_size: int = Field(256, ge=64, le=512)
    chunk_overlap: int = Field(10, ge=0, le=30)  # percent of chunk_size, as AutoRAG
    embedding_model: str | None = None  # None: the settings' default
    embedding_pooling: Literal["cls", "mean"] | None = None
    ai_search_model: str | None = None
    rewrite_query: bool = False
    rewrite_model: str | None = None
    split_exclusions: bool = False  # ragd's: retrieve without "... but don't mention X"
    reranking: bool = False
    reranking_model: str | None = None
    max_num_results: int = Field(10, ge=1, le=50)
    score_threshold: float = Field(0.4, ge=0.0, le=1.0)
    index_method: IndexMethod = Field(default_factory=IndexMethod)
    fusion_method: Literal["rrf", "max"] = "max"  # AI Search: rrf; ragd: max (bench/fusion/)
    cache: bool = False
    cache_threshold: Literal[
        "super_strict_match", "close_enough", "flexible_friend", "anything_goes"
    ] = "close_enough"
    cache_ttl: int | None = Field(None, ge=600, le=518400)  # seconds; None: 48 h (AI Search)
    sync_interval: int = 21600
    paused: bool = False  # no scheduled syncs (a sync asked through the API or CLI still runs)
    custom_metadata: list[CustomMetadataField] = Field(
        default_factory=list, max_length=MAX_CUSTOM_FIELDS
    )
    retrieval_options: RetrievalSettings = Field(default_factory=RetrievalSettings)
    indexing_options: IndexingOptions = Field(default_factory=IndexingOptions)
    system_prompt: str | None = None

    @field_validator("sync_interval")
    @classmethod
    def _interval(cls, value: int) -> int:
        if value not in SYNC_INTERVALS:
            raise ValueError(f"sync_interval must be one of {', '.join(map(str, SYNC_INTERVALS))}")
        return value

    @model_validator(mode="after")
    def _some_index(self) -> InstanceConfig:
        if not (self.index_method.vector or self.index_method.keyword):
            raise ValueError("index_method needs vector, keyword or both")
        return self

    @model_validator(mode="after")
    def _fields_once(self) -> InstanceConfig:
        names = [f.field_name.lower() for f in self.custom_metadata]
        if len(set(names)) != len(names):
            raise ValueError("custom_metadata names a field twice (names are case-insensitive)")
        return self

    @model_validator(mode="after")
    def _boosts_known(self) -> InstanceConfig:
        try:
            self.boosts()
        except InvalidRequest as exc:
            raise ValueError(exc.message) from exc
        return self

    def boosts(self, requested: Sequence[BoostField] | None = None) -> tuple[Boost, ...]:
        """`requested` (else the instance's `retrieval_options.boost_by`) checked against its
        metadata fields."""
        chosen = self.retrieval_options.boost_by if requested is None else requested
        pairs = [(b.field, b.direction) for b in chosen]
        return resolve_boosts(pairs, {f.field_name: f.data_type for f in self.custom_metadata})

    @property
    def overlap_tokens(self) -> int:
        return self.chunk_size * self.chunk_overlap // 100


def check_instance_id(instance_id: str) -> str:
    if not INSTANCE_ID.fullmatch(instance_id):
        raise InvalidRequest(
            "instance id must be 1-64 lowercase letters, digits, '-' or '_', starting alphanumeric"
        )
    return instance_id


def instance_config(row: Instance) -> InstanceConfig:
    return InstanceConfig.model_validate(row.config)


def validate_config(config: dict[str, Any]) -> InstanceConfig:
    try:
        return InstanceConfig.model_validate(config)
    except ValueError as exc:
        raise InvalidRequest(_first_error(exc)) from exc


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "config"
        return f"{where}: {first.get('msg', 'invalid value')}"
    return str(exc)
