"""Grounded generation: prompt + chunks fitted by token count -> streamed answer."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from rag_service.errors import InvalidRequest
from rag_service.providers.protocols import ChatMessage, Generator, Usage
from rag_service.retrieve.search import ScoredChunk

NOT_FOUND_ANSWER = "I could not find an answer to that in the documents."
DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using only the documents below. Answer in one to three short "
    "sentences. After each fact, name the file it comes from in square brackets, like "
    "[guide.md]. If the documents do not answer the question, reply only: "
    f"{NOT_FOUND_ANSWER} Do not make anything up."
)
# Small models read a few good chunks better than many: at most this many, best first.
ANSWER_CHUNKS, ANSWER_CHUNKS_LARGE_CONTEXT = 3, 6
LARGE_CONTEXT = 16_000
LOOP_WORDS, LOOP_TIMES = 5, 3  # a run of 5 words said 3 times: the model is looping
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
    most = (
        ANSWER_CHUNKS_LARGE_CONTEXT if generator.context_window > LARGE_CONTEXT else ANSWER_CHUNKS
    )
    for chunk in chunks[:most]:
        trial = generator.count_tokens(messages([*used, chunk]))
        if trial > budget:
            break
        used.append(chunk)
        tokens = trial
    return Prompt(messages(used), used, tokens)


def repeats(text: str, words: int = LOOP_WORDS, times: int = LOOP_TIMES) -> bool:
    """Whether some run of `words` words comes back `times` times or more."""
    tokens = re.findall(r"\w+", text.lower())
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - words + 1):
        gram = tuple(tokens[i : i + words])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] >= times:
            return True
    return False


async def generate_answer(
    generator: Generator, prompt: Prompt, max_tokens: int, usage: Usage | None = None
) -> AsyncGenerator[str, None]:
    """Stream the answer. With no chunk to ground it, the model is not asked at all: small
    models invent answers even when told that nothing matched. A model that starts to loop is
    stopped there. An answer that names none of its files ends with a `Sources:` line."""
    if not prompt.used:
        yield NOT_FOUND_ANSWER
        return
    stream = generator.stream(prompt.messages, max_tokens=max_tokens, usage=usage)
    text = ""
    try:
        async for piece in stream:
            text += piece
            if repeats(text):
                break
            yield piece
    finally:
        # A client that hangs up must stop the model, not leave it generating in its thread.
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()
    files = list(dict.fromkeys(c.key for c in prompt.used))
    if NOT_FOUND_ANSWER not in text and not any(name in text for name in files):
        yield f"\n\nSources: {', '.join(files)}"
