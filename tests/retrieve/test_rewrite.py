"""Query rewrite: the prompt sent, the cleaning of the model's reply, the fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from rag_service.providers.protocols import ChatMessage, Usage
from rag_service.retrieve.rewrite import (
    DEFAULT_REWRITE_PROMPT,
    REWRITE_MAX_TOKENS,
    clean_rewrite,
    rewrite_query,
)
from tests.fakes import EchoGenerator


class ScriptedGenerator(EchoGenerator):
    """Records what it was asked; answers `reply` in two pieces, or echoes as EchoGenerator
    does when there is none."""

    def __init__(self, reply: str | None = None, context_window: int = 4096) -> None:
        self.reply, self.context_window = reply, context_window
        self.asked: list[tuple[list[ChatMessage], int]] = []

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        self.asked.append((list(messages), max_tokens))
        if self.reply is None:
            async for piece in super().stream(messages, max_tokens=max_tokens, usage=usage):
                yield piece
            return
        half = len(self.reply) // 2
        for piece in (self.reply[:half], self.reply[half:]):
            yield piece


async def test_the_model_gets_the_prompt_and_question_and_its_reply_is_the_query() -> None:
    gen = ScriptedGenerator("green tea brewing temperature water degrees\n")
    query = await rewrite_query(gen, "how hot should the water be for my tea?")
    assert query == "green tea brewing temperature water degrees"
    ((messages, max_tokens),) = gen.asked
    assert max_tokens == REWRITE_MAX_TOKENS
    assert messages == [
        {"role": "system", "content": DEFAULT_REWRITE_PROMPT},
        {"role": "user", "content": "how hot should the water be for my tea?"},
    ]


async def test_history_and_a_custom_prompt_are_sent() -> None:
    gen = ScriptedGenerator("deploy Cloudflare Worker")
    history = [
        {"role": "user", "content": "What is Cloudflare Workers?"},
        {"role": "assistant", "content": "A serverless platform."},
    ]
    query = await rewrite_query(gen, "How do I deploy one?", history, prompt="Be terse.")
    assert query == "deploy Cloudflare Worker"
    system, user = gen.asked[0][0]
    assert system == {"role": "system", "content": "Be terse."}
    assert user["content"] == (
        "Conversation so far:\nuser: What is Cloudflare Workers?\n"
        "assistant: A serverless platform.\n\nLatest message: How do I deploy one?"
    )


async def test_oldest_turns_are_dropped_to_fit_the_context_window() -> None:
    gen = ScriptedGenerator("q", context_window=REWRITE_MAX_TOKENS + 60)
    history = [{"role": "user", "content": f"turn {i} " + "word " * 10} for i in range(5)]
    await rewrite_query(gen, "and then?", history, prompt="Be terse.")
    sent = gen.asked[0][0][1]["content"]
    assert "turn 4" in sent and "turn 0" not in sent
    assert gen.count_tokens(gen.asked[0][0]) <= gen.context_window - REWRITE_MAX_TOKENS


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('Rewritten query: "bicycle tyre puncture repair"', "bicycle tyre puncture repair"),
        (
            "\n\n  Query: sourdough bulk fermentation time \nThis query adds...",
            "sourdough bulk fermentation time",
        ),
        ("`solar system largest planet`", "solar system largest planet"),
        ("x" * 5000, "x" * 1000),
    ],
)
def test_replies_are_cleaned(reply: str, expected: str) -> None:
    assert clean_rewrite(reply) == expected


async def test_an_empty_reply_keeps_the_question() -> None:
    assert await rewrite_query(ScriptedGenerator("  \n ''"), "opening hours") == "opening hours"


async def test_with_the_echo_generator_the_prompt_comes_back() -> None:
    query = await rewrite_query(EchoGenerator(), "anything", prompt="bread oven loaf")
    assert query == "bread oven loaf"
