"""Requests may name only the models the operator allows (no paths, no hub ids of the caller's
choosing); a model that fails to load is not tried again at once and its error names no files;
a client that hangs up stops a non-streamed answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_service.config import Settings
from rag_service.instances import InstanceConfig
from rag_service.providers.protocols import ChatMessage, Generator, Usage
from tests.api.test_legacy import AUTH, assert_error, database_url, served  # noqa: F401
from tests.fakes import EchoGenerator
from tests.serving import serve

API = "/accounts/acc/ai-search/instances"


class SlowGenerator(EchoGenerator):
    """One word every 50 ms, for as long as it is read; says when it was closed."""

    model_id = "test/slow"

    def __init__(self) -> None:
        self.written = 0
        self.closed_at: float | None = None

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                self.written += 1
                yield f"word{self.written} "  # distinct: no loop to stop
        finally:
            self.closed_at = time.monotonic()


async def test_only_allowed_models_are_loaded(settings: Settings, tmp_path: Path) -> None:
    loads: list[str] = []

    def generator(cfg: InstanceConfig) -> Generator:
        loads.append(cfg.ai_search_model or "")
        return EchoGenerator()

    settings.allowed_models = ["allowed/model"]
    async with served(settings, tmp_path / "src", generator_factory=generator) as http:
        http.headers.update(AUTH)
        for model in ("someorg/somerepo", "/etc/passwd.gguf", "../models/x"):
            started = time.monotonic()
            resp = await http.post("/ai-search", json={"query": "bread", "model": model})
            assert_error(resp, 400, "RAGD_ALLOWED_MODELS")
            assert time.monotonic() - started < 5  # refused, not loaded
        chat = {"messages": [{"role": "user", "content": "bread"}], "model": "x/y"}
        assert_error(await http.post(f"{API}/default/chat/completions", json=chat), 400, "x/y")
        rerank = {"query": "bread", "reranking": {"enabled": True, "model": "/tmp/ce"}}
        assert_error(await http.post("/search", json=rerank), 400, "not available here")
        made = await http.post(API, json={"id": "m", "ai_search_model": "evil/one"})
        assert_error(made, 400, "not available here")
        put = await http.put(f"{API}/default", json={"reranking_model": "/root/model"})
        assert_error(put, 400, "not available here")
        ok = await http.post("/ai-search", json={"query": "bread", "model": "allowed/model"})
        assert ok.status_code == 200, ok.text
    assert loads == ["allowed/model"]


async def test_a_failed_load_is_remembered_and_names_no_file(
    settings: Settings, tmp_path: Path
) -> None:
    tries: list[str] = []

    def broken(cfg: InstanceConfig) -> Generator:
        tries.append(cfg.ai_search_model or "")
        raise OSError("cannot open /srv/secret/weights/model.gguf")

    async with served(settings, tmp_path / "src", generator_factory=broken) as http:
        http.headers.update(AUTH)
        for _ in range(3):
            resp = await http.post("/ai-search", json={"query": "bread"})
            assert resp.status_code == 502
            message = resp.json()["errors"][0]["message"]
            assert "could not be loaded" in message and "/srv" not in message
    assert len(tries) == 1


@pytest.mark.parametrize("route", ["chat", "autorag"])
async def test_a_hang_up_stops_a_non_streamed_answer(
    settings: Settings, tmp_path: Path, route: str
) -> None:
    slow = SlowGenerator()
    async with served(settings, tmp_path / "src", generator_factory=lambda cfg: slow) as http:
        if route == "chat":
            url, body = (
                f"{API}/default/chat/completions",
                {"messages": [{"role": "user", "content": "bread"}]},
            )
        else:
            url, body = "/ai-search", {"query": "bread"}
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, json=body, headers=AUTH, timeout=0.5)
        hung_up = time.monotonic()
        for _ in range(100):
            if slow.closed_at is not None:
                break
            await asyncio.sleep(0.05)
    assert slow.closed_at is not None and slow.closed_at - hung_up < 2.0
    assert slow.written < 60  # 200 words would take 10 s


async def failing_server(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An answer server that fails with its own internals in the body."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 500, "headers": []})
    await send({"type": "http.response.body", "body": b"Traceback at /srv/llm/secret.py: OOM"})


async def test_an_upstream_error_is_summarised_not_echoed(
    settings: Settings, tmp_path: Path
) -> None:
    async with serve(failing_server) as upstream:
        settings.generation_url = f"{upstream}/v1"
        kind = {"generator_factory": None, "answer_model": "upstream-model"}
        async with served(settings, tmp_path / "src", **kind) as http:
            http.headers.update(AUTH)
            resp = await http.post("/ai-search", json={"query": "bread"})
            assert resp.status_code == 502
            message = resp.json()["errors"][0]["message"]
            assert message == "the answer server failed (HTTP 500)"
            body = {"query": "bread", "stream": True}
            async with http.stream("POST", "/ai-search", json=body) as streamed:
                text = "".join([line async for line in streamed.aiter_lines()])
            assert "the answer server failed (HTTP 500)" in text and "/srv" not in text
