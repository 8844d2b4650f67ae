"""Query rewrite (AI Search's `query_rewrite`, AutoRAG's `rewrite_query`): an LLM turns the
question, read with the conversation before it, into a search query."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag_service.providers.protocols import ChatMessage, Generator

# Cloudflare does not publish its default; this follows the example its docs give.
DEFAULT_REWRITE_PROMPT = (
    "You rewrite a user's question into a search query for a document search engine. "
    "Keep every important term of the question; add synonyms and closely related terms; "
    "drop greetings and filler words; when the question refers to earlier messages "
    '("it", "that one"), name what it refers to. '
    "Reply with the search query only, on one line, with no explanation."
)
REWRITE_MAX_TOKENS = 64
MAX_REWRITTEN_CHARS = 1000
_LABEL = re.compile(r"^\s*(?:rewritten|optimi[sz]ed|search)?\s*query\s*:\s*", re.IGNORECASE)


def rewrite_messages(
    question: str, history: Sequence[ChatMessage] = (), prompt: str | None = None
) -> list[ChatMessage]:
    """The rewrite prompt, then the conversation so far (when any) and the latest question."""
    user = question
    if history:
        turns = "\n".join(f"{m['role']}: {m['content']}" for m in history)
        user = f"Conversation so far:\n{turns}\n\nLatest message: {question}"
    return [
        {"role": "system", "content": prompt or DEFAULT_REWRITE_PROMPT},
        {"role": "user", "content": user},
    ]


def clean_rewrite(text: str) -> str:
    """The first non-empty line, without a `Query:` label, quotes or surrounding space."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip().strip("\"'`").strip()
    return line[:MAX_REWRITTEN_CHARS].strip()


async def rewrite_query(
    generator: Generator,
    question: str,
    history: Sequence[ChatMessage] = (),
    prompt: str | None = None,
    max_tokens: int = REWRITE_MAX_TOKENS,
) -> str:
    """The rewritten query; the question itself when the model returns nothing usable.
    Oldest turns are dropped until the prompt fits the model's context window."""
    turns = list(history)
    messages = rewrite_messages(question, turns, prompt)
    while turns and generator.count_tokens(messages) > generator.context_window - max_tokens:
        turns.pop(0)
        messages = rewrite_messages(question, turns, prompt)
    pieces = [p async for p in generator.stream(messages, max_tokens=max_tokens)]
    return clean_rewrite("".join(pieces)) or question
