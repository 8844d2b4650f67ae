"""Query rewrite, reranking and the similarity cache over real HTTP, each switched per request
(and by the instance's settings), with test models that show what each stage did."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_service.config import Settings
from tests.api.test_legacy import AUTH, assert_error, database_url, served  # noqa: F401
from tests.retrieve.test_rerank import WordReranker
from tests.retrieve.test_rewrite import ScriptedGenerator

API = "/accounts/acc/ai-search"
INSTANCE = f"{API}/instances/default"
BREAD, GARDEN = "kitchen/recipes/bread.md", "garden.md"


class Rig:
    def __init__(self, http: httpx.AsyncClient, src: Path) -> None:
        self.http, self.src = http, src
        self.generator, self.reranker = ScriptedGenerator(), WordReranker("tomato")

    async def post(self, path: str, body: dict[str, Any], status: int = 200) -> httpx.Response:
        resp = await self.http.post(path, json=body, headers=AUTH)
        assert resp.status_code == status, resp.text
        return resp

    async def search(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = (await self.post(f"{INSTANCE}/search", body)).json()
        return result

    async def chat(self, question: str, **options: Any) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": question}], "ai_search_options": options}
        return await self.post(f"{INSTANCE}/chat/completions", body)

    async def sync(self) -> None:
        job = (await self.post(f"{INSTANCE}/jobs", {})).json()["result"]
        for _ in range(600):  # up to 30 s on a loaded machine
            url = f"{INSTANCE}/jobs/{job['id']}"
            job = (await self.http.get(url, headers=AUTH)).json()["result"]
            if job["ended_at"]:
                break
            await asyncio.sleep(0.05)
        assert job["status"] == "completed"


@pytest.fixture
async def rig(settings: Settings, tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(httpx.AsyncClient(), tmp_path / "src")
    async with served(
        settings,
        rig.src,
        generator_factory=lambda cfg: rig.generator,
        reranker_factory=lambda model: rig.reranker,
    ) as http:
        rig.http = http
        yield rig


def keys(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["item"]["key"] for c in chunks]


async def test_reranking_reorders_scores_and_cuts_at_its_threshold(rig: Rig) -> None:
    retrieval = {"retrieval_type": "vector", "match_threshold": 0.0}
    plain = await rig.search({"query": "bake bread", "ai_search_options": {"retrieval": retrieval}})
    assert keys(plain["result"]["chunks"]) == [BREAD, GARDEN] and rig.reranker.calls == []
    body = {
        "query": "bake bread",
        "ai_search_options": {"retrieval": retrieval, "reranking": {"enabled": True}},
    }
    ranked = (await rig.search(body))["result"]["chunks"]
    assert keys(ranked) == [GARDEN, BREAD]
    assert [c["scoring_details"]["reranking_score"] for c in ranked] == [0.9, 0.2]
    assert ranked[0]["score"] == 0.9 and "vector_score" in ranked[0]["scoring_details"]
    assert rig.reranker.calls[-1][0] == "bake bread"
    body["ai_search_options"]["reranking"]["match_threshold"] = 0.5
    assert keys((await rig.search(body))["result"]["chunks"]) == [GARDEN]
    answer = (await rig.chat("bake bread", **body["ai_search_options"])).json()
    assert keys(answer["chunks"]) == [GARDEN]
    legacy = {"query": "bake bread", "ranking_options": {"score_threshold": 0.0}}
    page = (await rig.post("/search", {**legacy, "reranking": {"enabled": True}})).json()
    assert [d["filename"] for d in page["result"]["data"]] == [GARDEN, BREAD]
    assert page["messages"] == []


async def test_reranking_with_no_loadable_model_is_a_clear_error(rig: Rig) -> None:
    body = {
        "query": "x",
        "ai_search_options": {
            "reranking": {"enabled": True, "model": "@cf/baai/bge-reranker-base"}
        },
    }
    resp = await rig.http.post(f"{INSTANCE}/search", json=body, headers=AUTH)
    assert_error(resp, 400, "RAGD_CLOUDFLARE_API_TOKEN")


async def test_query_rewrite_applies_to_follow_ups_and_to_autorag_queries(rig: Rig) -> None:
    rewrite = {"enabled": True, "rewrite_prompt": "tomato garden plants"}
    first = await rig.search(
        {"query": "what grows?", "ai_search_options": {"query_rewrite": rewrite}}
    )
    assert first["result"]["search_query"] == "what grows?" and rig.generator.asked == []
    assert "follow-up messages" in first["messages"][0]["message"]
    conversation = [
        {"role": "user", "content": "Tell me about the garden"},
        {"role": "assistant", "content": "It has tomatoes."},
        {"role": "user", "content": "what grows?"},
    ]
    body = {"messages": conversation, "ai_search_options": {"query_rewrite": rewrite}}
    follow_up = await rig.search(body)
    # EchoGenerator echoes its system prompt: the request's rewrite prompt came back.
    assert follow_up["result"]["search_query"] == "tomato garden plants"
    assert keys(follow_up["result"]["chunks"]) == [GARDEN] and follow_up["messages"] == []
    ((system, user), _), *_ = rig.generator.asked
    assert system["content"] == "tomato garden plants"
    assert "Tell me about the garden" in user["content"] and "what grows?" in user["content"]
    off = {"messages": conversation, "ai_search_options": {"query_rewrite": {"enabled": False}}}
    assert (await rig.search(off))["result"]["search_query"] == "what grows?"
    page = (await rig.post("/search", {"query": "what grows?", "rewrite_query": True})).json()
    assert page["result"]["search_query"].startswith("You rewrite a user s question")  # echoed


async def test_the_cache_answers_a_near_identical_prompt_until_a_chunk_changes(rig: Rig) -> None:
    cache = {"enabled": True, "cache_threshold": "close_enough"}
    first = await rig.chat("How do I bake the bread?", cache=cache)
    assert first.headers["cf-aig-cache-status"] == "MISS" and len(rig.generator.asked) == 1
    again = await rig.chat("how do I bake the bread", cache=cache)
    assert again.headers["cf-aig-cache-status"] == "HIT" and len(rig.generator.asked) == 1
    hit, miss = again.json(), first.json()
    assert hit["choices"][0]["message"] == miss["choices"][0]["message"]
    assert hit["chunks"] == miss["chunks"] and hit["model"] == miss["model"]
    uncached = await rig.chat("how do I bake the bread")
    assert "cf-aig-cache-status" not in uncached.headers and len(rig.generator.asked) == 2
    strict = await rig.chat(
        "how do I bake bread", cache={**cache, "cache_threshold": "super_strict_match"}
    )
    assert strict.headers["cf-aig-cache-status"] == "MISS" and len(rig.generator.asked) == 3
    async with rig.http.stream(
        "POST",
        f"{INSTANCE}/chat/completions",
        json={
            "messages": [{"role": "user", "content": "How do I bake the bread?"}],
            "stream": True,
            "ai_search_options": {"cache": cache},
        },
        headers=AUTH,
    ) as stream:
        assert stream.headers["cf-aig-cache-status"] == "HIT"
        events = [ln[6:] async for ln in stream.aiter_lines() if ln.startswith("data: ")]
    assert json.loads(events[0]) == miss["chunks"]  # the chunks event comes first
    assert (
        json.loads(events[1])["choices"][0]["delta"]["content"]
        == miss["choices"][0]["message"]["content"]
    )
    assert events[-1] == "[DONE]" and len(rig.generator.asked) == 3

    (rig.src / BREAD).write_text("Knead the rye dough and bake the bread in a cold oven.")
    await rig.sync()
    changed = await rig.chat("How do I bake the bread?", cache=cache)
    assert changed.headers["cf-aig-cache-status"] == "MISS" and len(rig.generator.asked) == 4
    assert "rye" in json.dumps(changed.json()["chunks"])
    assert (await rig.chat("How do I bake the bread?", cache=cache)).headers[
        "cf-aig-cache-status"
    ] == "HIT"


async def test_instance_settings_turn_the_stages_on_and_requests_turn_them_off(rig: Rig) -> None:
    settings = {"reranking": True, "cache": True, "cache_threshold": "close_enough"}
    resp = await rig.http.put(INSTANCE, json=settings, headers=AUTH)
    assert resp.status_code == 200, resp.text
    retrieval = {"retrieval_type": "vector", "match_threshold": 0.0}
    on = await rig.search({"query": "bake bread", "ai_search_options": {"retrieval": retrieval}})
    assert keys(on["result"]["chunks"]) == [GARDEN, BREAD]
    assert "search results are not cached" in on["messages"][0]["message"]
    off = {"retrieval": retrieval, "reranking": {"enabled": False}, "cache": {"enabled": False}}
    plain = await rig.search({"query": "bake bread", "ai_search_options": off})
    assert keys(plain["result"]["chunks"]) == [BREAD, GARDEN] and plain["messages"] == []
    body = {"query": "bake the bread", "ranking_options": {"score_threshold": 0.0}}
    first = await rig.post("/ai-search", body)
    again = await rig.post("/ai-search", body)
    assert [r.headers["cf-aig-cache-status"] for r in (first, again)] == ["MISS", "HIT"]
    assert again.json()["result"]["response"] == first.json()["result"]["response"]
    assert len(rig.generator.asked) == 1


async def test_split_exclusions_searches_without_the_excluded_part(rig: Rig) -> None:
    question = "Water the garden, but don't mention the bread dough in the oven."
    keyword = {"retrieval_type": "keyword", "keyword_match_mode": "or"}
    asked = await rig.search({"query": question, "ai_search_options": {"retrieval": keyword}})
    assert asked["result"]["search_query"] == question
    assert keys(asked["result"]["chunks"])[0] == BREAD  # "bread dough oven" outweighs "garden"
    options = {"retrieval": keyword, "query_rewrite": {"split_exclusions": True}}
    split = await rig.search({"query": question, "ai_search_options": options})
    assert split["result"]["search_query"] == "Water the garden."
    assert keys(split["result"]["chunks"]) == [GARDEN]
    # The instance's setting turns it on for AutoRAG's route too; a request turns it off.
    resp = await rig.http.put(INSTANCE, json={"split_exclusions": True}, headers=AUTH)
    assert resp.status_code == 200 and resp.json()["result"]["split_exclusions"] is True
    legacy = (await rig.post("/search", {"query": question})).json()["result"]
    assert legacy["search_query"] == "Water the garden."
    body = {"query": question, "split_exclusions": False}
    assert (await rig.post("/search", body)).json()["result"]["search_query"] == question


async def test_boost_by_timestamp_moves_recent_or_old_chunks_up(rig: Rig) -> None:
    os.utime(rig.src / BREAD, (1_600_000_000, 1_600_000_000))  # 2020
    os.utime(rig.src / GARDEN, (1_750_000_000, 1_750_000_000))  # 2025
    await rig.sync()

    async def ranked(boost_by: list[dict[str, str]] | None) -> list[tuple[str, float]]:
        # Each document is first in one list and second in the other: a tie before boosting.
        retrieval: dict[str, Any] = {
            "retrieval_type": "hybrid",
            "keyword_match_mode": "or",  # each word matches one document
            "match_threshold": 0.0,
        }
        if boost_by is not None:
            retrieval["boost_by"] = boost_by
        body = {"query": "dough plants", "ai_search_options": {"retrieval": retrieval}}
        chunks = (await rig.search(body))["result"]["chunks"]
        return [(c["item"]["key"], round(c["score"], 4)) for c in chunks]

    tie = await ranked(None)
    assert [k for k, _ in tie] == [BREAD, GARDEN] and tie[0][1] == tie[1][1]
    newest = await ranked([{"field": "timestamp", "direction": "desc"}])
    assert newest == [(GARDEN, round(tie[0][1] + 0.1, 4)), (BREAD, tie[0][1])]
    oldest = await ranked([{"field": "timestamp"}])  # asc by default for dates
    assert [k for k, _ in oldest] == [BREAD, GARDEN]

    # The instance's retrieval_options.boost_by applies when a request names none.
    boost = [{"field": "timestamp", "direction": "desc"}]
    options = {"retrieval_options": {"boost_by": boost, "keyword_match_mode": "or"}}
    resp = await rig.http.put(INSTANCE, json=options, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["retrieval_options"]["boost_by"] == [
        {"field": "timestamp", "direction": "desc"}
    ]
    assert [k for k, _ in await ranked(None)] == [GARDEN, BREAD]
    assert [k for k, _ in await ranked([])] == [BREAD, GARDEN]  # a request's [] turns it off
    legacy = (await rig.post("/search", {"query": "dough plants"})).json()["result"]
    assert legacy["data"][0]["filename"] == GARDEN


async def test_boost_by_mistakes_are_400s_that_say_what_to_fix(rig: Rig) -> None:
    resp = await rig.http.put(
        INSTANCE,
        json={"custom_metadata": [{"field_name": "team", "data_type": "text"}]},
        headers=AUTH,
    )
    assert resp.status_code == 200, resp.text
    for boost_by, fragment in [
        ([{"field": "author"}], "neither 'timestamp' nor a custom_metadata field"),
        ([{"field": "team", "direction": "desc"}], "team' is text: use 'exists'"),
        ([{"field": "timestamp"}, {"field": "timestamp"}], "names 'timestamp' twice"),
        ([{"field": "timestamp"}] * 4, "at most 3"),
    ]:
        retrieval = {"boost_by": boost_by}
        body = {"query": "bread", "ai_search_options": {"retrieval": retrieval}}
        assert_error(await rig.post(f"{INSTANCE}/search", body, 400), 400, fragment)
    bad = {"retrieval_options": {"boost_by": [{"field": "team", "direction": "asc"}]}}
    assert_error(await rig.http.put(INSTANCE, json=bad, headers=AUTH), 400, "use 'exists'")
    exists = {"boost_by": [{"field": "team"}]}
    body = {"query": "bread", "ai_search_options": {"retrieval": exists}}
    assert (await rig.search(body))["success"] is True


async def test_purge_cache_empties_the_similarity_cache(rig: Rig) -> None:
    cache = {"enabled": True, "cache_threshold": "close_enough"}
    assert (await rig.chat("How do I bake the bread?", cache=cache)).headers[
        "cf-aig-cache-status"
    ] == "MISS"
    assert (await rig.chat("how do I bake the bread", cache=cache)).headers[
        "cf-aig-cache-status"
    ] == "HIT"
    purged = (await rig.post(f"{INSTANCE}/purge_cache", {})).json()["result"]
    assert purged == {"id": "default", "purged": 1}
    again = await rig.chat("how do I bake the bread", cache=cache)
    assert again.headers["cf-aig-cache-status"] == "MISS"
    missing = await rig.http.post(f"{INSTANCE}-nope/purge_cache", headers=AUTH)
    assert missing.status_code == 404
