"""A bucket on a real S3 server (moto, over HTTP) holding the shared docs corpus, synced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from rag_service.config import Settings
from rag_service.models import Item
from rag_service.query.options import QueryOptions
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder
from tests.ingest.test_manifest import DOCS, manifest
from tests.s3_server import MotoS3, moto_s3

BUCKET = "corpus"


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"


@pytest.fixture
async def runtime(settings: Settings, s3: MotoS3) -> AsyncIterator[Runtime]:
    if not DOCS.is_dir():
        pytest.skip("shared/data/docs is missing")
    objects: dict[str, bytes | tuple[bytes, dict[str, str]]] = {
        f"docs/{path.relative_to(DOCS).as_posix()}": path.read_bytes()
        for path in sorted(DOCS.rglob("*"))
        if path.is_file() and path.name not in ("LICENSE", "MANIFEST.md")
    }
    objects["docs/manual.md"] = (
        b"The pump needs priming before first use.",
        {"category": "manual"},
    )
    objects["other/outside.md"] = b"Outside the prefix: never indexed."
    s3.make_bucket(BUCKET, objects)
    settings.s3_endpoint_url = s3.endpoint_url
    settings.s3_access_key_id = s3.access_key_id
    settings.s3_secret_access_key = SecretStr(s3.secret_access_key)
    settings.s3_region = s3.region
    embedder = HashingEmbedder()
    rt = Runtime(settings, Providers(settings, embedder_factory=lambda model, pooling: embedder))
    async with rt:
        config = {"custom_metadata": [{"field_name": "category", "data_type": "text"}]}
        await rt.instances.ensure("bucket", f"s3://{BUCKET}/docs/", config)
        yield rt


async def keys_for(rt: Runtime, query: str, **filters: object) -> list[str]:
    opts = QueryOptions("keyword", max_num_results=50, filters=filters or None)
    return [c.key for c in (await rt.pipeline.search("bucket", query, opts)).chunks]


async def test_corpus_in_a_bucket_syncs_to_the_manifest(runtime: Runtime, s3: MotoS3) -> None:
    result = await runtime.sync("bucket")
    assert result.status == "completed"
    async with runtime.sessions() as session:
        items = {i.key: i for i in (await session.scalars(select(Item))).all()}
    assert "other/outside.md" not in items
    for key, expected, _phrase in manifest(DOCS):
        item = items[f"docs/{key}"]
        if expected.startswith("completed"):
            assert item.status == "completed", (key, item.error)
        else:
            assert item.status in ("error", "skipped") and item.error, key
    # A sentence from inside a PDF, found through the index.
    assert "docs/py-pdf-sample-files/pdflatex-4-pages.pdf" in await keys_for(
        runtime, "text without a meaning"
    )
    # Declared custom metadata (x-amz-meta-category) is carried into the chunks and filterable.
    assert await keys_for(runtime, "pump priming", category="manual") == ["docs/manual.md"]
    assert await keys_for(runtime, "pump priming", category="other") == []

    s3.delete(BUCKET, "docs/python-docx-test-files/par-hyperlinks.docx")
    s3.put(BUCKET, {"docs/manual.md": (b"Descale the kettle every month.", {"category": "manual"})})
    again = await runtime.sync("bucket")
    assert again.counts["deleted"] == 1 and again.counts["changed"] == 1
    assert again.counts["completed"] == 1
    assert await keys_for(runtime, "Three hyperlinks") == []
    assert await keys_for(runtime, "descale kettle") == ["docs/manual.md"]
    assert await keys_for(runtime, "pump priming") == []
