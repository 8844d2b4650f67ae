"""Chat generation through any OpenAI-compatible server (Ollama, llama.cpp server, vLLM...)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from rag_service.errors import BackendError, RateLimited, UpstreamError
from rag_service.providers.protocols import ChatMessage, Tokenizer, Usage


class OpenAIGenerator:
    """A `Generator` streaming `/chat/completions` over SSE.

    Without a `tokenizer` (the remote model's is unknown), `count_tokens` over-estimates:
    one token per 3 characters plus 4 per message and 3 for the reply cue.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        context_window: int = 8192,
        timeout: float = 120.0,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.model_id = model
        self.context_window = context_window
        self._url = base_url.rstrip("/") + "/chat/completions"
        url = httpx.URL(self._url)
        self._shown_url = str(url.copy_with(username=None, password=None, query=None))
        self._api_key = api_key or None
        self._tokenizer = tokenizer
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """The tokenizer's count when given, else a conservative character-based estimate."""
        return sum(self._count(m.get("content", "")) + 4 for m in messages) + 3

    def _count(self, text: str) -> int:
        if self._tokenizer is not None:
            return self._tokenizer.count_tokens(text)
        return math.ceil(len(text) / 3)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        """Content deltas as the server sends them; `usage` from the server's final event."""
        body = {
            "model": self.model_id,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        got_usage, text = False, []
        try:
            async with self._client.stream("POST", self._url, json=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise self._http_error(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank lines, `: comments`, `event:`/`id:` fields
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = self._decode(data)
                    if usage is not None and isinstance(event.get("usage"), dict):
                        usage.prompt_tokens = int(event["usage"].get("prompt_tokens") or 0)
                        usage.completion_tokens = int(event["usage"].get("completion_tokens") or 0)
                        got_usage = True
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if choice.get("index", 0) == 0 and piece:
                            text.append(piece)
                            yield piece
        except httpx.HTTPError as exc:
            detail = self._redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
            raise UpstreamError(
                f"generation server at {self._shown_url} failed: {detail}",
                summary=f"the answer server could not be reached ({type(exc).__name__})",
            ) from None
        if usage is not None and not got_usage:  # the server sent none: estimate
            usage.prompt_tokens = self.count_tokens(messages)
            usage.completion_tokens = self._count("".join(text))

    def _decode(self, data: str) -> dict[str, Any]:
        """One event's JSON; an `error` event raises."""
        try:
            event = json.loads(data)
        except ValueError:
            raise UpstreamError(
                f"malformed event from {self._shown_url}: {data[:200]!r}",
                summary="the answer server sent a malformed event",
            ) from None
        if not isinstance(event, dict):
            return {}
        if event.get("error"):
            raise UpstreamError(
                f"generation server error: {self._redact(str(event['error']))}",
                summary="the answer server reported an error while answering",
            )
        return event

    def _http_error(self, resp: httpx.Response) -> BackendError:
        status, where = resp.status_code, self._shown_url
        if status in (401, 403):
            return BackendError(f"server at {where} rejected the API key (HTTP {status})")
        if status == 404:
            return UpstreamError(
                f"model {self.model_id!r} or endpoint {where} not found (HTTP 404): "
                + self._redact(resp.text[:300]),
                summary=f"the answer server has no model {self.model_id!r} (HTTP 404)",
            )
        if status == 429:
            return RateLimited(f"generation server at {where} is rate limiting (HTTP 429)")
        return UpstreamError(
            f"generation server at {where} answered HTTP {status}: "
            + self._redact(resp.text[:300]),
            summary=f"the answer server failed (HTTP {status})",
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text
