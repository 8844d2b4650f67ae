"""AI Search request bodies (`query` or `messages`, `ai_search_options`) and the query options
they ask for."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from rag_service.errors import InvalidRequest
from rag_service.instances import BoostField
from rag_service.providers.protocols import ChatMessage
from rag_service.query.options import QueryOptions, request_filter
from rag_service.retrieve.boost import MAX_BOOSTS
from rag_service.retrieve.cache import CacheThreshold

MAX_QUERY_CHARS = 10_000
MAX_INSTANCES_ACROSS = 10
Role = Literal["system", "developer", "user", "assistant", "tool"]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ContentPart(Lenient):
    type: Literal["text", "image_url", "file"]
    text: str | None = None


class Message(Lenient):
    role: Role
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(p.type != "text" for p in self.content):
            raise InvalidRequest(
                "only text message content is supported: send content as a string or text parts"
            )
        return "\n".join(p.text or "" for p in self.content)


class Retrieval(Lenient):
    retrieval_type: Literal["vector", "keyword", "hybrid"] | None = None
    fusion_method: Literal["rrf", "max"] | None = None
    keyword_match_mode: Literal["and", "or"] | None = None
    match_threshold: float | None = Field(None, ge=0.0, le=1.0)
    max_num_results: int | None = Field(None, ge=1, le=50)
    filters: dict[str, Any] | None = None
    context_expansion: int = Field(0, ge=0, le=3)
    boost_by: list[BoostField] | None = Field(None, max_length=MAX_BOOSTS)  # None: instance's
    return_on_failure: bool = False


class QueryRewrite(Lenient):
    enabled: bool | None = None
    split_exclusions: bool | None = None  # ragd's: retrieve without "... but don't mention X"
    model: str | None = None
    rewrite_prompt: str | None = Field(
        None, max_length=20_000, validation_alias=AliasChoices("rewrite_prompt", "prompt")
    )


class Reranking(Lenient):
    enabled: bool | None = None
    model: str | None = None
    match_threshold: float | None = Field(
        None, ge=0.0, le=1.0, validation_alias=AliasChoices("match_threshold", "threshold")
    )


class Cache(Lenient):
    enabled: bool | None = None
    cache_threshold: CacheThreshold | None = None


class AISearchOptions(Lenient):
    retrieval: Retrieval = Field(default_factory=Retrieval)
    query_rewrite: QueryRewrite = Field(default_factory=QueryRewrite)
    reranking: Reranking = Field(default_factory=Reranking)
    cache: Cache = Field(default_factory=Cache)
    custom_metadata: dict[str, str | float | bool] = Field(default_factory=dict, max_length=2)
    # the namespace routes' instances to search (AI Search: at most 10)
    instance_ids: list[str] | None = Field(None, min_length=1, max_length=MAX_INSTANCES_ACROSS)

    def query_options(self) -> QueryOptions:
        r, qr, rr, cache = self.retrieval, self.query_rewrite, self.reranking, self.cache
        return QueryOptions(
            retrieval_type=r.retrieval_type,
            fusion_method=r.fusion_method,
            keyword_match_mode=r.keyword_match_mode,
            match_threshold=r.match_threshold,
            max_num_results=r.max_num_results,
            filters=request_filter(r.filters),
            boost_by=r.boost_by,
            context_expansion=r.context_expansion,
            rewrite=qr.enabled,
            rewrite_model=qr.model,
            rewrite_prompt=qr.rewrite_prompt,
            split_exclusions=qr.split_exclusions,
            reranking=rr.enabled,
            reranking_model=rr.model,
            reranking_threshold=rr.match_threshold,
            cache=cache.enabled,
            cache_threshold=cache.cache_threshold,
        )


class SearchRequest(Lenient):
    """AI Search's search body: `query` or `messages`, not both."""

    query: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    messages: list[Message] | None = Field(None, min_length=1, max_length=100)
    ai_search_options: AISearchOptions = Field(
        default_factory=AISearchOptions,
        validation_alias=AliasChoices("ai_search_options", "aisearch_options"),
    )

    @model_validator(mode="after")
    def _one_question(self) -> SearchRequest:
        if self.query is not None and self.messages is not None:
            raise ValueError("send either 'query' or 'messages', not both")
        if self.query is None and self.messages is None:
            raise ValueError("'query' or 'messages' is required")
        return self

    def question(self) -> str:
        """The text to search for: `query`, or the last user message."""
        text = self.query if self.query is not None else last_user_text(self.messages or [])
        if not text.strip():
            raise InvalidRequest("the query is blank: send a non-empty 'query' or user message")
        return text

    def follow_up_of(self) -> list[ChatMessage] | None:
        return None if self.messages is None else earlier_turns(self.messages)


class ChatRequest(Lenient):
    """AI Search's chat completions body (OpenAI's, plus `ai_search_options`)."""

    messages: list[Message] = Field(min_length=1, max_length=100)
    model: str | None = Field(None, max_length=200)
    stream: bool = False
    ai_search_options: AISearchOptions = Field(
        default_factory=AISearchOptions,
        validation_alias=AliasChoices("ai_search_options", "aisearch_options"),
    )

    def question(self) -> str:
        text = last_user_text(self.messages)
        if not text.strip():
            raise InvalidRequest("the last user message is blank: ask something")
        return text

    def system_prompt(self) -> str | None:
        parts = [m.text() for m in self.messages if m.role in ("system", "developer")]
        return "\n\n".join(p for p in parts if p.strip()) or None

    def follow_up_of(self) -> list[ChatMessage] | None:
        return earlier_turns(self.messages)


def last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text()
    raise InvalidRequest("messages need at least one message with role 'user'")


def earlier_turns(messages: list[Message]) -> list[ChatMessage] | None:
    """The user and assistant turns before the last user message; None when there are none
    (a first message is searched as it is, as in AI Search)."""
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=0)
    turns: list[ChatMessage] = [
        {"role": m.role, "content": m.text()}
        for m in messages[:last]
        if m.role in ("user", "assistant")
    ]
    return turns or None


def note_messages(notes: list[str]) -> list[dict[str, Any]]:
    return [{"code": 7100 + n, "message": text} for n, text in enumerate(notes, 1)]
