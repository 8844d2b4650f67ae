"""The Vectorize v2 client and `VectorizeIndex` against the fake over real HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag_service.errors import BackendError, IndexMismatch, InvalidRequest
from rag_service.providers.cloudflare import CloudflareAPI, VectorizeClient, VectorizeIndex
from rag_service.providers.cloudflare.vectorize import MAX_UPSERT_VECTORS
from rag_service.providers.cloudflare.vectorize_index import index_name
from rag_service.providers.protocols import IndexSpec, VectorIndex, VectorRecord
from tests.cloudflare.fake_api import FakeCloudflare

SPEC = IndexSpec("@cf/baai/bge-small-en-v1.5", "cls", 8)


def unit(i: int, dims: int = 8) -> list[float]:
    v = np.zeros(dims)
    v[i % dims], v[(i + 1) % dims] = 1.0, 0.1 * (i // dims)
    return (v / np.linalg.norm(v)).tolist()


async def test_client_routes_and_eventual_consistency(
    fake: FakeCloudflare, api: CloudflareAPI
) -> None:
    fake.mutation_delay = 0.3
    client = VectorizeClient(api, "docs")
    created = await client.create(8, "cosine", "made by a test")
    assert created["config"] == {"dimensions": 8, "metric": "cosine"}
    assert (await client.get())["description"] == "made by a test"
    await client.create_metadata_index("folder", "string")
    assert await client.list_metadata_indexes() == [
        {"propertyName": "folder", "indexType": "string"}
    ]
    vectors = [
        {"id": f"v{i}", "values": unit(i), "metadata": {"folder": f"f{i % 2}/", "n": i}}
        for i in range(30)
    ]
    (mutation,) = await client.upsert(vectors)
    upsert = fake.calls(path_part="/upsert")[0]
    assert upsert.headers["content-type"] == "application/x-ndjson"
    assert upsert.ndjson() == vectors
    assert await client.query(unit(3), 5) == []  # not applied yet
    assert not await client.wait_for_mutation(mutation, timeout=0.05, poll=0.01)
    assert await client.wait_for_mutation(mutation, timeout=5, poll=0.05)
    assert (await client.info())["vectorCount"] == 30
    hits = await client.query(unit(3), 3, return_metadata="all", filter={"folder": "f1/"})
    assert hits[0]["id"] == "v3" and all(h["metadata"]["n"] % 2 for h in hits)
    assert len(await client.query(unit(3), 100)) == 30
    with pytest.raises(BackendError, match=r"topK must be 1\.\.20"):
        await client.query(unit(3), 21, return_values=True)
    got = await client.get_by_ids([f"v{i}" for i in range(25)] + ["missing"])
    assert [g["id"] for g in got] == [f"v{i}" for i in range(25)]
    assert len(fake.calls(path_part="/get_by_ids")) == 2  # 20 ids a request
    (deleted,) = await client.delete_by_ids(["v0", "v1"])
    assert await client.wait_for_mutation(deleted, timeout=5, poll=0.05)
    page = await client.list_vectors(count=10)
    assert page["count"] == 10 and page["totalCount"] == 28 and page["isTruncated"]
    assert sorted(await client.list_ids()) == sorted(f"v{i}" for i in range(2, 30))


async def test_upserts_are_split_at_5000_vectors(fake: FakeCloudflare, api: CloudflareAPI) -> None:
    client = VectorizeClient(api, "big")
    await client.create(2)
    vectors = [{"id": f"id{i}", "values": [1.0, float(i)]} for i in range(MAX_UPSERT_VECTORS + 1)]
    assert len(await client.upsert(vectors)) == 2
    assert [len(c.ndjson()) for c in fake.calls(path_part="/upsert")] == [5000, 1]
    assert (await client.info())["vectorCount"] == 5001


async def test_a_later_mutation_also_counts_as_caught_up(
    fake: FakeCloudflare, api: CloudflareAPI
) -> None:
    client = VectorizeClient(api, "order")
    await client.create(2)
    first = (await client.upsert([{"id": "a", "values": [1.0, 0.0]}]))[0]
    await client.upsert([{"id": "b", "values": [0.0, 1.0]}])
    assert await client.wait_for_mutation(first, timeout=1, poll=0.01)


async def open_index(api: CloudflareAPI, tmp_path: Path, spec: IndexSpec = SPEC) -> VectorizeIndex:
    return await VectorizeIndex.open(
        api, "ragd-test", spec, tmp_path / "kw", metadata_indexes={"tier": "number"}
    )


def record(i: int, text: str, folder: str = "docs/") -> VectorRecord:
    meta = {"folder": folder, "timestamp": 1700000000 + i, "filename": f"{folder}{i}.md"}
    return VectorRecord(f"item:{i}", np.array(unit(i), np.float32), {**meta, "text": text})


async def test_index_is_created_with_spec_and_metadata_indexes(
    fake: FakeCloudflare, api: CloudflareAPI, tmp_path: Path
) -> None:
    index = await open_index(api, tmp_path)
    assert isinstance(index, VectorIndex)
    stored = fake.vectorize.indexes["ragd-test"]
    assert stored.dimensions == 8 and stored.metric == "cosine"
    assert "model=@cf/baai/bge-small-en-v1.5 pooling=cls dimensions=8" in stored.description
    assert stored.metadata_indexes == {
        "folder": "string",
        "timestamp": "number",
        "filename": "string",
        "tier": "number",
    }
    await index.close()
    again = await open_index(api, tmp_path / "again")  # reopening creates nothing
    await again.close()
    assert len(fake.calls(path_part="/metadata_index/create")) == 4
    for other in (IndexSpec(SPEC.model, "mean", 8), IndexSpec("@cf/baai/bge-m3", "cls", 8)):
        with pytest.raises(IndexMismatch, match="holds ragd: model=@cf/baai/bge-small"):
            await open_index(api, tmp_path / "x", other)


async def test_index_upsert_query_keyword_get_delete(
    fake: FakeCloudflare, api: CloudflareAPI, tmp_path: Path
) -> None:
    fake.mutation_delay = 0.2
    index = await open_index(api, tmp_path)
    texts = ["green tea brewing", "sourdough bulk fermentation", "bicycle tyre repair"]
    await index.upsert([record(i, texts[i % 3], "a/" if i < 15 else "b/") for i in range(30)])
    assert len(fake.calls(path_part="/upsert")) == 1
    hits = await index.keyword_query("sourdough fermentation", 5)  # local: at once
    assert hits and all("sourdough" in str(h.metadata["text"]) for h in hits)
    assert await index.settle(timeout=5)
    assert await index.count() == 30
    top = await index.query(np.array(unit(4), np.float32), 5, {"folder": {"$eq": "b/"}})
    assert len(top) == 5 and all(m.metadata["folder"] == "b/" for m in top)
    assert fake.calls(path_part="/query")[-1].json()["returnMetadata"] == "all"
    deep = await index.query(np.array(unit(4), np.float32), 50)
    assert len(deep) == 30 and deep[0].id == "item:4" and deep[0].metadata["text"]
    assert fake.calls(path_part="/query")[-1].json() | {"vector": None} == {
        "vector": None,
        "topK": 50,
        "returnMetadata": "none",
        "returnValues": False,
    }
    assert [m.id for m in await index.get(["item:1", "nope", "item:2"])] == ["item:1", "item:2"]
    await index.delete([f"item:{i}" for i in range(10)])
    assert await index.settle(timeout=5)
    assert await index.count() == 20
    assert not {h.id for h in await index.keyword_query("green tea", 30)} & {"item:0", "item:3"}
    with pytest.raises(IndexMismatch, match="expects 8 dimensions"):
        await index.upsert([VectorRecord("bad", np.ones(4, np.float32), {})])
    with pytest.raises(InvalidRequest, match="1-64 bytes"):
        await index.upsert([VectorRecord("x" * 65, np.array(unit(1), np.float32), {})])
    await index.close()


async def test_long_text_is_cut_to_fit_10_kib(
    fake: FakeCloudflare, api: CloudflareAPI, tmp_path: Path
) -> None:
    index = await open_index(api, tmp_path)
    long_text = "é" * 8000 + " needle"  # 16 KB of UTF-8
    await index.upsert([record(1, long_text)])
    stored = fake.vectorize.indexes["ragd-test"].vectors["item:1"].metadata
    size = len(str(stored).encode())
    assert size <= 10 * 1024 and long_text.startswith(stored["text"]) and stored["text"]
    (hit,) = await index.keyword_query("needle", 1)  # the local store keeps all of it
    assert hit.metadata["text"] == long_text
    await index.close()


def test_index_names_follow_vectorize_rules() -> None:
    assert index_name("default") == "ragd-default"
    long = index_name("a_very_long_instance_name_that_goes_on_and_on")
    assert len(long) <= 32 and long.startswith("ragd-a-very-long")
    assert long != index_name("a_very_long_instance_name_that_goes_on_and_off")
