"""`ragd ask` / `ragd search` and the HTTP routes run one query pipeline: with the instance's
reranking and split_exclusions on, the terminal and `POST /ai-search` / `.../search` give the
same sources in the same order with the same scores."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from rag_service import cli
from rag_service.api.app import create_app
from rag_service.config import Settings
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import EchoGenerator, HashingEmbedder
from tests.serving import serve

QUESTION = "Which bread has flour in it, but don't mention cheese"
SOURCE_LINE = re.compile(r"^\s+(\d\.\d{3})\s+(\S+)$", re.MULTILINE)


class FlourReranker:
    """Scores a text by how often it says 'flour' (a stand-in cross-encoder)."""

    model_id = "test/flour"

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        return [min(1.0, 0.2 + 0.3 * t.lower().count("flour")) for t in texts]


def providers(settings: Settings) -> Providers:
    embedder, generator, reranker = HashingEmbedder(), EchoGenerator(), FlourReranker()
    return Providers(
        settings,
        embedder_factory=lambda model, pooling: embedder,
        generator_factory=lambda cfg: generator,
        reranker_factory=lambda model: reranker,
    )


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "rye.md").write_text("Rye bread: rye flour, water, salt and flour again.")
    (src / "cheese.md").write_text("Bread with cheese on top: the cheese melts on the bread.")
    (src / "white.md").write_text("White bread needs flour, yeast and water.")
    (src / "tea.md").write_text("Green tea is brewed at 80 degrees.")
    monkeypatch.setattr(cli, "make_providers", providers)
    monkeypatch.setenv("RAGD_SOURCE", str(src))
    runner = CliRunner()
    data = tmp_path / "data"
    assert runner.invoke(cli.app, ["sync", "--inline", "--data-dir", str(data)]).exit_code == 0
    return data


async def test_ask_and_ai_search_give_the_same_sources(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, api_tokens="t")  # RAGD_SOURCE: the folder
    async with Runtime(settings, providers(settings)) as rt:
        from rag_service import instance_changes

        changes = {"reranking": True, "split_exclusions": True, "score_threshold": 0.0}
        await instance_changes.update_instance(rt, "default", None, changes)
    app = create_app(settings, Runtime(settings, providers(settings)))
    headers = {"Authorization": "Bearer t"}
    async with serve(app) as url, httpx.AsyncClient(base_url=url, headers=headers) as http:
        answer = (await http.post("/ai-search", json={"query": QUESTION})).json()["result"]
        found = (await http.post("/search", json={"query": QUESTION})).json()["result"]
    api_sources = [(f"{d['score']:.3f}", d["filename"]) for d in answer["data"]]
    # The instance's stages ran: the exclusion was split off, the reranker ordered by flour.
    assert answer["search_query"] == found["search_query"] == "Which bread has flour in it"
    assert api_sources[0] == ("0.800", "rye.md")

    runner = CliRunner()
    asked = await asyncio.to_thread(
        runner.invoke, cli.app, ["ask", QUESTION, "--data-dir", str(data_dir)]
    )
    assert asked.exit_code == 0, asked.output
    assert SOURCE_LINE.findall(asked.stdout.split("Sources:")[1]) == api_sources

    args = ["search", QUESTION, "--json", "--data-dir", str(data_dir)]
    searched = await asyncio.to_thread(runner.invoke, cli.app, args)
    assert searched.exit_code == 0, searched.output
    cli_found = json.loads(searched.stdout)
    assert cli_found["search_query"] == found["search_query"]
    ranked = [(c["item"]["key"], round(c["score"], 6)) for c in cli_found["chunks"]]
    assert ranked == [(d["filename"], d["score"]) for d in found["data"]]
