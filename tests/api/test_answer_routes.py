"""Answers over HTTP with the offline default (the extractive answerer): cited, streamed, an
honest "not found", and bad questions refused with a 4xx."""

from __future__ import annotations

import json
from pathlib import Path

from rag_service.config import Settings
from tests.api.test_legacy import AUTH, assert_error, database_url, served  # noqa: F401

CHAT = "/accounts/acc/ai-search/instances/default/chat/completions"


async def test_the_default_answer_is_extracted_and_cited(
    settings: Settings, tmp_path: Path
) -> None:
    no_llm = {"generator_factory": lambda cfg: 1 / 0, "answer_model": None}
    async with served(settings, tmp_path / "src", **no_llm) as http:
        http.headers.update(AUTH)
        asked = {"query": "What do you do with the bread dough and the loaf?"}
        found = (await http.post("/ai-search", json=asked)).json()["result"]
        assert "[kitchen/recipes/bread.md]" in found["response"]
        none = await http.post("/ai-search", json={"query": "Who painted the Mona Lisa?"})
        assert "could not find" in none.json()["result"]["response"]
        question = "Which plants in the garden need water every morning?"
        body = {"messages": [{"role": "user", "content": question}], "stream": True}
        async with http.stream("POST", CHAT, json=body) as resp:
            text = "".join([line async for line in resp.aiter_lines()])
        assert resp.status_code == 200 and "garden.md" in text and "data: [DONE]" in text
        other = await http.post("/ai-search", json={"query": "パンはどうやって焼きますか\uff1f"})
        assert other.status_code == 200, other.text  # another script: an answer, no crash
        assert_error(await http.post("/ai-search", json={"query": "x" * 100_000}), 400, "query")
        assert_error(await http.post("/ai-search", json={"query": "  "}), 400, "blank")
        empty = {"messages": [{"role": "user", "content": ""}]}
        assert_error(await http.post(CHAT, json=empty), 400, "blank")
        chosen = {**body, "stream": False, "model": "extractive"}
        reply = (await http.post(CHAT, json=chosen)).json()
        assert reply["model"] == "extractive" and reply["chunks"], json.dumps(reply)[:300]
