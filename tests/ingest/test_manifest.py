"""A folder holding ../shared/data/docs syncs to the outcome MANIFEST.md gives for every file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from rag_service.config import Settings
from rag_service.models import Item
from rag_service.query.options import QueryOptions
from rag_service.runtime import Runtime

DOCS = Path(__file__).resolve().parents[3] / "shared" / "data" / "docs"
ROW = re.compile(r"^\| (?P<file>[\w./-]+) \| [^|]+ \| (?P<expected>[^|]+) \| (?P<find>[^|]+) \|$")
# What an error message must name, by the manifest's wording.
PROBLEM = {
    "encrypted": "encrypted",
    "damaged PDF": "damaged PDF",
    "not a PDF": "not a PDF",
    "not a DOCX": "not a DOCX",
    "no text": "no extractable text",
    "empty": "empty",
}


def manifest(docs: Path) -> list[tuple[str, str, str | None]]:
    rows = []
    for line in (docs / "MANIFEST.md").read_text().splitlines():
        if (match := ROW.match(line.strip())) and match["file"] != "file":
            quoted = re.search(r'"([^"]+)"', match["find"])
            rows.append((match["file"], match["expected"].strip(), quoted[1] if quoted else None))
    return rows


@pytest.fixture(scope="module")
async def synced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Runtime, dict[str, Item]]:
    if not DOCS.is_dir():
        pytest.skip("shared/data/docs is missing")
    docs = DOCS
    data = tmp_path_factory.mktemp("manifest")
    rt = Runtime(Settings(data_dir=data))
    await rt.start()
    await rt.instances.ensure("docs", str(docs))
    result = await rt.sync("docs")
    assert result.status == "completed", result.end_reason
    async with rt.sessions() as session:
        items = {i.key: i for i in (await session.scalars(select(Item))).all()}
    yield rt, items  # type: ignore[misc]
    await rt.close()


def cases() -> list[tuple[str, str, str | None]]:
    return manifest(DOCS) if DOCS.is_dir() else []


def test_manifest_parses() -> None:
    if not DOCS.is_dir():
        pytest.skip("shared/data/docs is missing")
    assert len(cases()) == 24


@pytest.mark.parametrize(("key", "expected", "phrase"), cases(), ids=[c[0] for c in cases()])
async def test_outcome_matches_manifest(
    synced: tuple[Runtime, dict[str, Item]], key: str, expected: str, phrase: str | None
) -> None:
    rt, items = synced
    item = items[key]
    if expected.startswith("completed"):
        assert item.status == "completed", item.error
        assert item.chunks_count >= 1
        if phrase is None:
            return
        only_this = QueryOptions(
            "hybrid", match_threshold=0.0, max_num_results=50, filters={"filename": key}
        )
        texts = [
            c.text.lower() for c in (await rt.pipeline.search("docs", phrase, only_this)).chunks
        ]
        assert any(" ".join(phrase.lower().split()) in " ".join(t.split()) for t in texts)
        everywhere = QueryOptions("hybrid", match_threshold=0.0, max_num_results=50)
        assert key in {c.key for c in (await rt.pipeline.search("docs", phrase, everywhere)).chunks}
        return
    allowed = {"error", "skipped"} if expected.startswith("error or skipped") else {"error"}
    assert item.status in allowed, (item.status, item.error)
    problem = expected.split(":", 1)[1].strip()
    assert item.error and PROBLEM[problem].lower() in item.error.lower(), item.error
    assert "\n" not in item.error and item.chunks_count == 0
