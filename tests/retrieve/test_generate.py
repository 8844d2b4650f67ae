"""The prompt is fitted by token count; an answer with nothing to ground it is not generated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from rag_service.errors import InvalidRequest
from rag_service.providers.protocols import ChatMessage, Usage
from rag_service.retrieve.generate import NOT_FOUND_ANSWER, build_prompt, generate_answer
from rag_service.retrieve.search import ScoredChunk
from tests.fakes import EchoGenerator


def chunk(n: int, words: int) -> ScoredChunk:
    text = " ".join(f"w{n}x{i}" for i in range(words))
    return ScoredChunk(
        id=f"item:{n}", text=text, score=1 - n / 100, metadata={"filename": f"{n}.md"}
    )


class SmallWindow(EchoGenerator):
    context_window = 600


def test_chunks_are_added_in_rank_order_until_the_budget_is_spent() -> None:
    gen = SmallWindow()
    chunks = [chunk(n, 100) for n in range(10)]
    prompt = build_prompt(gen, "what is it?", chunks, max_tokens=200)
    assert [c.id for c in prompt.used] == [f"item:{n}" for n in range(len(prompt.used))]
    assert 1 <= len(prompt.used) < 10
    assert prompt.prompt_tokens == gen.count_tokens(prompt.messages)
    assert prompt.prompt_tokens + 200 <= gen.context_window
    one_more = build_prompt(gen, "what is it?", chunks[: len(prompt.used) + 1], max_tokens=200)
    assert len(one_more.used) == len(prompt.used)  # the next chunk would not have fitted
    assert all(f'file="{c.key}"' in prompt.messages[0]["content"] for c in prompt.used)


def test_a_question_that_cannot_fit_is_a_4xx() -> None:
    with pytest.raises(InvalidRequest, match="tokens"):
        build_prompt(SmallWindow(), "why " * 1000, [], max_tokens=200)


class Refusing(EchoGenerator):
    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        raise AssertionError("the model must not be asked without context")


async def test_no_context_means_no_generation() -> None:
    gen = Refusing()
    prompt = build_prompt(gen, "anything?", [], max_tokens=50)
    assert [p async for p in generate_answer(gen, prompt, 50)] == [NOT_FOUND_ANSWER]


async def test_answer_streams_in_pieces_with_usage() -> None:
    gen = EchoGenerator()
    prompt = build_prompt(gen, "q", [chunk(1, 30)], max_tokens=10)
    usage = Usage()
    pieces = [p async for p in generate_answer(gen, prompt, 10, usage)]
    assert len(pieces) == 11 and usage.completion_tokens == 10 and usage.prompt_tokens > 30
    assert pieces[-1] == "\n\nSources: 1.md"  # the answer named no file: listed after it


class Looping(EchoGenerator):
    async def stream(  # type: ignore[override]
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        yield "It is [1.md]. "
        for _ in range(max_tokens):
            yield "a bit of a miracle, "


async def test_a_looping_model_is_stopped_and_a_cited_answer_gets_no_sources_line() -> None:
    gen = Looping()
    prompt = build_prompt(gen, "q", [chunk(1, 5)], max_tokens=100)
    text = "".join([p async for p in generate_answer(gen, prompt, 100)])
    assert text == "It is [1.md]. a bit of a miracle, a bit of a miracle, "


def test_a_small_context_gets_a_few_chunks() -> None:
    prompt = build_prompt(EchoGenerator(), "q", [chunk(n, 5) for n in range(10)], max_tokens=10)
    assert len(prompt.used) == 3


class Counting(EchoGenerator):
    closed = False

    async def stream(  # type: ignore[override]
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        try:
            for n in range(max_tokens):
                yield f"t{n} "
        finally:
            Counting.closed = True


async def test_a_consumer_that_stops_early_closes_the_model_stream() -> None:
    gen = Counting()
    prompt = build_prompt(gen, "q", [chunk(1, 5)], max_tokens=100)
    answer = generate_answer(gen, prompt, 100)
    assert await anext(answer) == "t0 "
    await answer.aclose()
    assert Counting.closed
