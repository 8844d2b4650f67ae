"""LocalGenerator with the shipped SmolLM2 GGUF; OpenAIGenerator against a real SSE server."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from rag_service.errors import BackendError, InvalidRequest, RateLimited
from rag_service.providers.local_generator import REPETITION_PENALTY, THREAD_NAME, LocalGenerator
from rag_service.providers.openai_generator import OpenAIGenerator
from rag_service.providers.protocols import Generator, Usage
from tests.serving import free_port, read_body, serve

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake."}]
LOAD_TIMES: dict[str, float] = {}

# ---------------------------------------------------------------- LocalGenerator (SmolLM2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def local(cache_dir: Path) -> LocalGenerator:
    started = time.perf_counter()
    generator = LocalGenerator("smollm2", cache_dir=cache_dir)
    LOAD_TIMES["gguf"] = time.perf_counter() - started
    print(f"\nSmolLM2 GGUF load (+ conversion cache write): {LOAD_TIMES['gguf']:.1f}s")
    return generator


async def collect(agen: AsyncIterator[str]) -> tuple[list[str], float, float]:
    """The pieces, the time of the first one and the time of the end (from the start)."""
    started, first, pieces = time.perf_counter(), 0.0, []
    async for piece in agen:
        if not pieces:
            first = time.perf_counter() - started
        pieces.append(piece)
    return pieces, first, time.perf_counter() - started


def test_local_attributes_and_count_tokens(local: LocalGenerator) -> None:
    assert isinstance(local, Generator)
    assert (local.model_id, local.context_window) == ("smollm2", 8192)
    short = local.count_tokens([{"role": "user", "content": "Hi"}])
    longer = local.count_tokens([{"role": "user", "content": "Hi, tell me about bread. " * 10}])
    assert 0 < short < longer


async def test_local_stream_equals_greedy_generate(local: LocalGenerator) -> None:
    started = time.perf_counter()
    await local.warm()
    print(f"\nwarm(): {time.perf_counter() - started:.2f}s")
    usage = Usage()
    pieces, first, end = await collect(local.stream(STORY, max_tokens=12, usage=usage))
    assert len(pieces) >= 3 and first < end
    assert usage.prompt_tokens == local.count_tokens(STORY)
    assert 0 < usage.completion_tokens <= 12
    print(f"\n12 tokens: first piece {first:.2f}s, end {end:.2f}s, {12 / end:.1f} tokens/s")
    inputs = local.tokenizer.apply_chat_template(
        STORY, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    torch.set_num_threads(local.threads)  # as the generator does in its own thread
    with torch.inference_mode():
        out = local.model.generate(
            **inputs, max_new_tokens=12, do_sample=False, repetition_penalty=REPETITION_PENALTY
        )
    prompt = inputs["input_ids"].shape[1]
    assert "".join(pieces) == local.tokenizer.decode(out[0, prompt:], skip_special_tokens=True)
    assert usage.completion_tokens == out.shape[1] - prompt


async def test_local_aclose_stops_generation(local: LocalGenerator) -> None:
    usage = Usage()
    agen = local.stream(STORY, max_tokens=500, usage=usage)
    assert await agen.__anext__()
    await agen.aclose()  # type: ignore[attr-defined]
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]
    assert 0 < usage.completion_tokens < 50
    pieces, _, _ = await collect(local.stream(STORY, max_tokens=2))  # the lock was released
    assert pieces


async def test_local_prompt_too_long(local: LocalGenerator) -> None:
    huge = [{"role": "user", "content": "hello " * 9000}]
    with pytest.raises(InvalidRequest, match="exceeds"):
        await collect(local.stream(huge, max_tokens=8))
    fits = [{"role": "user", "content": "hello " * 100}]
    budget = local.context_window - local.count_tokens(fits) + 1
    with pytest.raises(InvalidRequest):
        await collect(local.stream(fits, max_tokens=budget))
    with pytest.raises(InvalidRequest):
        await collect(local.stream(fits, max_tokens=0))


async def test_local_converted_cache_loads_faster_and_agrees(
    local: LocalGenerator, cache_dir: Path
) -> None:
    assert len(os.listdir(cache_dir)) == 1
    started = time.perf_counter()
    cached = LocalGenerator("smollm2", cache_dir=cache_dir)
    LOAD_TIMES["cached"] = time.perf_counter() - started
    print(f"\nSmolLM2 load from the conversion cache: {LOAD_TIMES['cached']:.1f}s")
    # Loaded from the converted folder, not the GGUF again (times are printed, not asserted).
    assert Path(cached.model.config.name_or_path).parent == cache_dir
    assert cached.count_tokens(STORY) == local.count_tokens(STORY)
    ours, _, _ = await collect(local.stream(STORY, max_tokens=6))
    theirs, _, _ = await collect(cached.stream(STORY, max_tokens=6))
    assert ours == theirs


# ---------------------------------------------------------------- OpenAIGenerator (real server)

KEY = "sk-test-secret-123"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
SEEN: list[dict[str, Any]] = []


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def delta(text: str) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


async def chat_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A tiny OpenAI-compatible server; the model name picks the behaviour."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = await read_body(receive)
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    request = json.loads(body or b"{}")
    SEEN.append({"path": scope["path"], "headers": headers, "body": request})

    async def reply(status: int, payload: dict[str, Any]) -> None:
        head = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    auth = headers.get("authorization", "")
    model = request.get("model")
    if scope["path"] != "/v1/chat/completions":
        return await reply(404, {"error": "404 page not found"})
    if auth != f"Bearer {KEY}":
        return await reply(401, {"error": {"message": f"Incorrect API key provided: {auth}"}})
    if model in ("missing", "busy", "boom"):
        status = {"missing": 404, "busy": 429, "boom": 500}[model]
        return await reply(status, {"error": f"model {model!r} says {status}"})
    chunks = [
        b": keep-alive\n\n",
        sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        delta("Hel"),
        delta("lo"),
        *(lambda e: [e[:9], e[9:20], e[20:]])(delta(" wor")),  # one event over 3 writes
        b"event: message\n" + delta("ld"),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]
    if model == "crlf":
        chunks = [c.replace(b"\n", b"\r\n") for c in chunks]
    if model != "nousage":
        chunks.append(sse({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 4}}))
    if model == "error-midway":
        chunks.append(sse({"error": {"message": "out of memory"}}))
    chunks.append(b"data: [DONE]\n\n")
    head = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(0.005)
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve(chat_app) as url:
        yield f"{url}/v1"


@pytest.mark.parametrize("model", ["ok", "crlf"])
async def test_openai_streams_pieces_and_usage(base_url: str, model: str) -> None:
    generator = OpenAIGenerator(base_url + "/", model, api_key=KEY)
    assert isinstance(generator, Generator)
    usage = Usage()
    messages = [{"role": "user", "content": "Say hello"}]
    pieces, _, _ = await collect(
        generator.stream(messages, max_tokens=20, temperature=0.5, usage=usage)
    )
    await generator.aclose()
    assert pieces == ["Hel", "lo", " wor", "ld"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 4)
    seen = SEEN[-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == f"Bearer {KEY}"
    assert seen["body"] == {
        "model": model,
        "messages": messages,
        "max_tokens": 20,
        "temperature": 0.5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_openai_estimates_usage_when_none_sent(base_url: str) -> None:
    generator = OpenAIGenerator(base_url, "nousage", api_key=KEY)
    usage = Usage()
    messages = [{"role": "user", "content": "x" * 30}]
    assert "".join([p async for p in generator.stream(messages, max_tokens=5, usage=usage)])
    assert usage.prompt_tokens == generator.count_tokens(messages) == 10 + 4 + 3
    assert usage.completion_tokens == 4  # ceil(len("Hello world") / 3)


@pytest.mark.parametrize(
    ("model", "key", "error", "needle"),
    [
        ("ok", "wrong-key-456", BackendError, "rejected the API key (HTTP 401)"),
        ("ok", None, BackendError, "HTTP 401"),
        ("missing", KEY, BackendError, "model 'missing' or endpoint"),
        ("busy", KEY, RateLimited, "429"),
        ("boom", KEY, BackendError, "HTTP 500"),
        ("error-midway", KEY, BackendError, "out of memory"),
    ],
)
async def test_openai_errors(
    base_url: str, model: str, key: str | None, error: type[Exception], needle: str
) -> None:
    generator = OpenAIGenerator(base_url, model, api_key=key)
    with pytest.raises(error) as caught:
        await collect(generator.stream([{"role": "user", "content": "hi"}], max_tokens=5))
    message = str(caught.value)
    assert needle in message
    assert "wrong-key-456" not in message and KEY not in message
    if model == "boom":
        assert base_url in message


async def test_openai_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    generator = OpenAIGenerator(url, "ok", api_key=KEY)
    with pytest.raises(BackendError) as caught:
        await collect(generator.stream([{"role": "user", "content": "hi"}], max_tokens=5))
    assert url in str(caught.value) and KEY not in str(caught.value)
    assert not isinstance(caught.value, RateLimited)


async def test_openai_injected_client_and_tokenizer() -> None:
    class Words:
        def count_tokens(self, text: str) -> int:
            return len(text.split())

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": "forbidden"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    generator = OpenAIGenerator(
        "http://llm.invalid/v1", "m", "k3y", client=client, tokenizer=Words()
    )
    assert generator.count_tokens([{"role": "user", "content": "one two three"}]) == 3 + 4 + 3
    with pytest.raises(BackendError, match=r"HTTP 403"):
        await collect(generator.stream([{"role": "user", "content": "hi"}], max_tokens=5))
    await generator.aclose()  # not ours: left open
    assert not client.is_closed
    await client.aclose()
