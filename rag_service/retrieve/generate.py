"""Grounded generation: prompt + chunks fitted by token count -> streamed answer."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from rag_service.errors import InvalidRequest
from rag_service.providers.protocols import ChatMessage, Generator, Usage
from rag_service.retrieve.search import ScoredChunk

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant that answers questions using only the documents provided "
    "below. Cite the file names you used. If the documents do not contain the answer, say that "
    "you could not find it in the documents; do not make anything up."
)
NO_CONTEXT = (
    "No document matched the question. Say that you could not find an answer in the documents."
)


@dataclass
class Prompt:
    messages: list[ChatMessage]
    used: list[ScoredChunk]  # the chunks that fit, in rank order
    prompt_tokens: int


def _context_message(chunks: Sequence[ScoredChunk]) -> str:
    if not chunks:
        return NO_CONTEXT
    parts = [f'<document file="{c.key}">\n{c.text}\n</document>' for c in chunks]
    return "Documents:\n" + "\n\n".join(parts)


def build_prompt(
    generator: Generator,
    query: str,
    chunks: Sequence[ScoredChunk],
    max_tokens: int,
    system_prompt: str | None = None,
) -> Prompt:
    """Add chunks in rank order while prompt + `max_tokens` fits the model's context window."""
    system = system_prompt or DEFAULT_SYSTEM_PROMPT
    budget = generator.context_window - max_tokens

    def messages(used: Sequence[ScoredChunk]) -> list[ChatMessage]:
        return [
            {"role": "system", "content": f"{system}\n\n{_context_message(used)}"},
            {"role": "user", "content": query},
        ]

    used: list[ScoredChunk] = []
    tokens = generator.count_tokens(messages(used))
    if tokens > budget:
        raise InvalidRequest(
            f"the question and system prompt take {tokens} tokens; the model "
            f"{generator.model_id} has {generator.context_window} with {max_tokens} kept for "
            "the answer"
        )
    for chunk in chunks:
        trial = generator.count_tokens(messages([*used, chunk]))
        if trial > budget:
            break
        used.append(chunk)
        tokens = trial
    return Prompt(messages(used), used, tokens)


NOT_FOUND_ANSWER = "I could not find anything about that in the documents."


async def generate_answer(
    generator: Generator, prompt: Prompt, max_tokens: int, usage: Usage | None = None
) -> AsyncGenerator[str, None]:
    """Stream the answer. With no chunk to ground it, the model is not asked at all: small
    models invent answers even when told that nothing matched."""
    if not prompt.used:
        yield NOT_FOUND_ANSWER
        return
    stream = generator.stream(prompt.messages, max_tokens=max_tokens, usage=usage)
    try:
        async for piece in stream:
            yield piece
    finally:
        # A client that hangs up must stop the model, not leave it generating in its thread.
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()
