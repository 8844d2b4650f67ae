"""Namespaces through Cloudflare's SDK 5.9.0 (`client.aisearch.namespaces.*`) against `ragd up`
started as the README says, nothing changed but `base_url`: namespaces' lifecycle, instances
under a namespace (names unique per namespace, not globally), namespaced search and chat, and
search and chat across instances. Every response validates strictly against the SDK's types."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cloudflare import APIStatusError, Cloudflare
from cloudflare.types.aisearch import (
    NamespaceChatCompletionsResponse,
    NamespaceCreateResponse,
    NamespaceListResponse,
    NamespaceReadResponse,
    NamespaceSearchResponse,
    NamespaceUpdateResponse,
)
from cloudflare.types.aisearch.namespaces import (
    InstanceChatCompletionsResponse,
    InstanceListResponse,
    InstanceReadResponse,
    InstanceSearchResponse,
)

from tests.api.test_sdk import ACCOUNT, raw_result, strict
from tests.test_up import search as wait_for_samples
from tests.test_up import service  # noqa: F401  (the `ragd up` fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KAYAK = "How should a kayak be stored?"
FILES = {
    "docs": {"kayak.md": "# Kayak care\n\nStore the kayak upside down, out of the sun."},
    "faq": {"boots.txt": "Dry wet hiking boots slowly, away from the fire, stuffed with paper."},
    "other": {"kayak-rental.txt": "Kayak rental costs twenty euros a day at the lake."},
}


@pytest.fixture(scope="module")
def client(service: tuple[str, str]) -> Iterator[Cloudflare]:  # noqa: F811
    base, token = service
    wait_for_samples(base, token, "green tea")
    with Cloudflare(api_token=token, base_url=base, max_retries=0, timeout=180) as cf:
        yield cf


def status_of(call: object) -> int:
    assert callable(call)
    with pytest.raises(APIStatusError) as caught:
        call()
    return caught.value.status_code


def error_message(call: object) -> str:
    assert callable(call)
    with pytest.raises(APIStatusError) as caught:
        call()
    body = caught.value.body
    assert isinstance(body, dict) and body["success"] is False, body
    return str(body["errors"][0]["message"])


def folder(tmp: pytest.TempPathFactory, files: dict[str, str]) -> Path:
    where = tmp.mktemp("ns-src")
    for name, text in files.items():
        (where / name).write_text(text)
    return where


def synced(client: Cloudflare, namespace: str, instance: str, query: str) -> None:
    """Ask for a sync (the embedded scheduler may have begun one: then that one serves) and
    wait until the instance finds something."""
    try:
        client.aisearch.namespaces.instances.jobs.create(
            instance, account_id=ACCOUNT, name=namespace
        )
    except APIStatusError as exc:
        assert exc.status_code in (409, 429), exc
    for _ in range(300):
        found = client.aisearch.namespaces.instances.search(
            instance, account_id=ACCOUNT, name=namespace, query=query
        )
        if found.chunks:
            return
        time.sleep(0.3)
    raise AssertionError(f"{namespace}/{instance} was never indexed")


@pytest.fixture(scope="module")
def shop(client: Cloudflare, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Namespace `shop` with instances `docs` and `faq`; `default` gets its own `docs`."""
    namespaces = client.aisearch.namespaces
    namespaces.create(account_id=ACCOUNT, name="shop", description="the shop's documents")
    for name in ("docs", "faq"):
        namespaces.instances.create(
            "shop", account_id=ACCOUNT, id=name, source=str(folder(tmp_path_factory, FILES[name]))
        )
    client.aisearch.instances.create(
        account_id=ACCOUNT, id="docs", source=str(folder(tmp_path_factory, FILES["other"]))
    )
    synced(client, "shop", "docs", KAYAK)
    synced(client, "shop", "faq", "boots")
    synced(client, "default", "docs", KAYAK)
    return "shop"


def test_namespace_lifecycle(client: Cloudflare) -> None:
    namespaces = client.aisearch.namespaces
    raw = namespaces.with_raw_response.create(account_id=ACCOUNT, name="team", description="t")
    created = strict(NamespaceCreateResponse, raw_result(raw))
    assert (created.name, created.description) == ("team", "t") and created.created_at

    listed = namespaces.with_raw_response.list(account_id=ACCOUNT)
    names = [strict(NamespaceListResponse, n).name for n in raw_result(listed)]
    assert names[0] == "default" and "team" in names
    assert [n.name for n in namespaces.list(account_id=ACCOUNT, search="TEA")] == ["team"]

    read = namespaces.with_raw_response.read("team", account_id=ACCOUNT)
    assert strict(NamespaceReadResponse, raw_result(read)).description == "t"
    updated = namespaces.with_raw_response.update("team", account_id=ACCOUNT, description="u")
    assert strict(NamespaceUpdateResponse, raw_result(updated)).description == "u"

    assert status_of(lambda: namespaces.create(account_id=ACCOUNT, name="team")) == 409
    assert status_of(lambda: namespaces.create(account_id=ACCOUNT, name="default")) == 409
    assert "cannot be deleted" in error_message(
        lambda: namespaces.delete("default", account_id=ACCOUNT)
    )
    assert "namespace name" in error_message(
        lambda: namespaces.create(account_id=ACCOUNT, name="Bad Name")
    )
    namespaces.delete("team", account_id=ACCOUNT)
    assert status_of(lambda: namespaces.read("team", account_id=ACCOUNT)) == 404


def test_instances_under_a_namespace(client: Cloudflare, shop: str) -> None:
    instances = client.aisearch.namespaces.instances
    listed = raw_result(instances.with_raw_response.list(shop, account_id=ACCOUNT))
    shown = [strict(InstanceListResponse, i) for i in listed]
    assert sorted(i.id for i in shown) == ["docs", "faq"]
    assert all(i.namespace == "shop" for i in shown)

    read = strict(
        InstanceReadResponse,
        raw_result(instances.with_raw_response.read("docs", account_id=ACCOUNT, name=shop)),
    )
    deprecated = client.aisearch.instances.read("docs", account_id=ACCOUNT)
    assert read.source != deprecated.source  # one name, two namespaces, two instances
    assert deprecated.namespace == "default"

    found = strict(
        InstanceSearchResponse,
        raw_result(
            instances.with_raw_response.search("docs", account_id=ACCOUNT, name=shop, query=KAYAK)
        ),
    )
    assert {c.item.key for c in found.chunks if c.item} == {"kayak.md"}
    other = client.aisearch.instances.search("docs", account_id=ACCOUNT, query=KAYAK)
    assert {c.item.key for c in other.chunks if c.item} == {"kayak-rental.txt"}

    assert "already exists in namespace 'shop'" in error_message(
        lambda: instances.create(shop, account_id=ACCOUNT, id="docs")
    )
    assert status_of(lambda: instances.read("docs", account_id=ACCOUNT, name="nowhere")) == 404
    assert "holds 2 instance" in error_message(
        lambda: client.aisearch.namespaces.delete(shop, account_id=ACCOUNT)
    )


def test_namespaced_chat_plain_and_streamed(client: Cloudflare, shop: str) -> None:
    instances = client.aisearch.namespaces.instances
    asked = [{"role": "user", "content": KAYAK}]
    raw = instances.with_raw_response.chat_completions(
        "docs", account_id=ACCOUNT, name=shop, messages=asked
    )
    answer = strict(InstanceChatCompletionsResponse, json.loads(raw.http_response.text))
    assert answer.chunks[0].item is not None and answer.chunks[0].item.key == "kayak.md"
    assert isinstance(answer.choices[0].message.content, str) and answer.choices[0].message.content

    with instances.with_streaming_response.chat_completions(
        "docs", account_id=ACCOUNT, name=shop, messages=asked, stream=True
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == "event: chunks"
    assert json.loads(lines[1][6:])[0]["item"]["key"] == "kayak.md"
    assert lines[-1] == "data: [DONE]"
    deltas = [json.loads(line[6:]) for line in lines[2:-1]]
    assert deltas and all(d["object"] == "chat.completion.chunk" for d in deltas)


def test_search_across_instances(client: Cloudflare, shop: str) -> None:
    options = {"instance_ids": ["docs", "faq", "missing"], "retrieval": {"max_num_results": 5}}
    raw = client.aisearch.namespaces.with_raw_response.search(
        shop, account_id=ACCOUNT, query="kayak storage and wet boots", aisearch_options=options
    )
    found = strict(NamespaceSearchResponse, raw_result(raw))
    keys = {(c.instance_id, c.item.key) for c in found.chunks if c.item}
    assert keys == {("docs", "kayak.md"), ("faq", "boots.txt")}
    scores = [c.score for c in found.chunks]
    assert scores == sorted(scores, reverse=True)
    assert found.errors is not None and [e.instance_id for e in found.errors] == ["missing"]
    assert "not found" in found.errors[0].message


def test_chat_across_instances(client: Cloudflare, shop: str) -> None:
    options = {"instance_ids": ["faq", "docs"]}
    asked = [{"role": "user", "content": "How do I dry wet boots?"}]
    raw = client.aisearch.namespaces.with_raw_response.chat_completions(
        shop, account_id=ACCOUNT, messages=asked, aisearch_options=options
    )
    answer = strict(NamespaceChatCompletionsResponse, json.loads(raw.http_response.text))
    assert answer.chunks[0].instance_id == "faq"
    assert "boots" in str(answer.choices[0].message.content).lower()
    assert answer.errors == []

    with client.aisearch.namespaces.with_streaming_response.chat_completions(
        shop, account_id=ACCOUNT, messages=asked, aisearch_options=options, stream=True
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == "event: chunks" and lines[-1] == "data: [DONE]"
    assert json.loads(lines[1][6:])[0]["instance_id"] == "faq"
    assert lines[2].startswith("data: {")  # no instance failed: no errors event

    with_missing = {"instance_ids": ["faq", "missing"]}
    with client.aisearch.namespaces.with_streaming_response.chat_completions(
        shop, account_id=ACCOUNT, messages=asked, aisearch_options=with_missing, stream=True
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == "event: chunks" and lines[2] == "event: errors"
    failed = json.loads(lines[3][6:])
    assert [e["instance_id"] for e in failed] == ["missing"] and "not found" in failed[0]["message"]
    assert lines[-1] == "data: [DONE]" and any('"chat.completion.chunk"' in x for x in lines)


def test_across_bad_input(client: Cloudflare, service: tuple[str, str], shop: str) -> None:  # noqa: F811
    namespaces = client.aisearch.namespaces
    eleven = {"instance_ids": [f"i{n}" for n in range(11)]}
    assert "instance_ids" in error_message(
        lambda: namespaces.search(shop, account_id=ACCOUNT, query="x", aisearch_options=eleven)
    )
    assert (
        status_of(
            lambda: namespaces.search(
                "nowhere", account_id=ACCOUNT, query="x", aisearch_options={"instance_ids": ["a"]}
            )
        )
        == 404
    )
    base, token = service
    missing = httpx.post(  # the SDK cannot send a body without instance_ids
        f"{base}/accounts/{ACCOUNT}/ai-search/namespaces/{shop}/search",
        json={"query": "x"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert missing.status_code == 400
    assert "instance_ids is required" in missing.json()["errors"][0]["message"]
    all_missing = namespaces.with_raw_response.search  # every instance failing: the error itself
    assert (
        status_of(
            lambda: all_missing(
                shop, account_id=ACCOUNT, query="x", aisearch_options={"instance_ids": ["nope"]}
            )
        )
        == 404
    )
