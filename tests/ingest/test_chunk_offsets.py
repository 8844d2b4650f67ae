"""Chunks carry their byte range in the item's original bytes (AI Search's start_byte and
end_byte): exact for text and Markdown, the source rows for CSV, null where text is derived."""

from __future__ import annotations

import codecs
import csv
import io
import json

import httpx
import pytest
from cloudflare.types.aisearch.namespaces.instances.item_chunks_response import (
    ItemChunksResponse,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from rag_service.ingest.chunk import Chunk, chunk_item
from rag_service.ingest.chunk_offsets import byte_ranges
from rag_service.ingest.extract import extract_text
from tests.api.test_legacy import AUTH, client, database_url  # noqa: F401
from tests.fakes import HashingEmbedder

TOKENS = HashingEmbedder()  # one token per word: quick, and multibyte letters are words
WORDS = ["café", "Zürich", "straße", "naïve", "日本語", "テキスト", "😀", "ελληνικά", "plain", "a"]


def sentences(n: int) -> str:
    """Paragraphs of multibyte UTF-8 text that extraction keeps verbatim (NFKC-stable, LF)."""
    return "\n\n".join(
        f"Section {i} — {WORDS[i % 10]} {WORDS[(i * 3) % 10]} and {WORDS[(i * 7) % 10]}. "
        f"The résumé of item {i} mentions {WORDS[(i + 4) % 10]} twice: {WORDS[(i + 4) % 10]}."
        for i in range(n)
    )


def chunks_of(key: str, data: bytes, size: int = 64, overlap: int = 6) -> list[Chunk]:
    return chunk_item(key, data, extract_text(key, data), TOKENS, size, overlap)


def piece(data: bytes, c: Chunk) -> bytes:
    assert c.start_byte is not None and c.end_byte is not None, c
    assert 0 <= c.start_byte < c.end_byte <= len(data)
    return data[c.start_byte : c.end_byte]


@pytest.mark.parametrize("key", ["notes.txt", "guide/readme.md", "a.markdown", "x.rst"])
def test_verbatim_text_chunks_are_exactly_their_bytes(key: str) -> None:
    data = sentences(40).encode()
    chunks = chunks_of(key, data)
    assert len(chunks) > 3
    for c in chunks:
        assert piece(data, c).decode() == c.text
    starts = [c.start_byte or 0 for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_normalised_text_maps_back_to_the_bytes_it_came_from() -> None:
    """BOM, CRLF, NFKC (ligatures, full-width, composed accents), control characters, trailing
    blanks and runs of blank lines: each chunk's bytes extract to text holding the chunk."""
    body = "\r\n".join(
        f"  Line {i}: ﬁne ＡＢＣ① cafe\u0301 日本語 \x01end   "
        + ("\r\n\r\n\r\n\r\n" * (i % 3 == 0))
        for i in range(120)
    )
    data = codecs.BOM_UTF8 + body.encode()
    chunks = chunks_of("messy.md", data)
    assert len(chunks) > 3
    for c in chunks:
        assert c.text in extract_text("messy.md", piece(data, c))
        assert c.start_byte is not None and c.start_byte >= len(codecs.BOM_UTF8)


def test_utf16_with_a_bom_counts_its_own_bytes() -> None:
    text = sentences(30)
    data = codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    for c in chunks_of("wide.txt", data):
        assert piece(data, c).decode("utf-16-le") == c.text


def test_repeated_text_maps_to_equal_text() -> None:
    data = ("The Danube flows through Wien — café Zürich. " * 200).encode()
    for c in chunks_of("river.txt", data):
        assert piece(data, c).decode() == c.text


ROWS = [["name", "city", "note"]] + [
    [f"Person {i} {WORDS[i % 10]}", WORDS[(i * 3) % 10], f"likes {WORDS[(i + 1) % 10]} 😀"]
    for i in range(80)
]


def csv_bytes(rows: list[list[str]], delimiter: str = ",") -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


@pytest.mark.parametrize(("key", "delimiter"), [("people.csv", ","), ("people.tsv", "\t")])
def test_csv_chunks_span_the_rows_their_lines_came_from(key: str, delimiter: str) -> None:
    """CSV text is rewritten (`column: value` lines): a chunk's range is its rows, so the
    header plus those bytes extract to the header line plus exactly the chunk."""
    data = csv_bytes(ROWS, delimiter)
    header = csv_bytes(ROWS[:1], delimiter)
    header_line = extract_text(key, data).split("\n", 1)[0]
    chunks = chunks_of(key, data)
    assert len(chunks) > 3
    for c in chunks:
        rows = piece(data, c)
        head = b"" if c.start_byte == 0 else header  # the first chunk holds the header line
        prefix = "" if c.start_byte == 0 else f"{header_line}\n"
        assert extract_text(key, head + rows) == prefix + c.text


def test_csv_with_a_line_break_inside_a_value_has_no_ranges() -> None:
    data = csv_bytes([*ROWS, ["Somebody", "Wien", "two\nlines"]])
    assert all(c.start_byte is c.end_byte is None for c in chunks_of("people.csv", data))


def test_csv_kept_as_raw_text_maps_like_text() -> None:
    data = "just one line of café text, with commas, nothing more".encode()
    (c,) = chunks_of("one.csv", data)
    assert piece(data, c).decode() == c.text


def test_json_is_flattened_so_its_chunks_have_no_range() -> None:
    doc = {"items": [{"name": f"{WORDS[i % 10]} {i}", "tags": WORDS[:4]} for i in range(60)]}
    data = json.dumps(doc, ensure_ascii=False, indent=1).encode()
    chunks = chunks_of("data.json", data)
    assert len(chunks) > 1
    assert all(c.start_byte is c.end_byte is None for c in chunks)


@pytest.mark.parametrize("key", ["broken.json", "broken.jsonl"])
def test_unparseable_json_is_kept_as_text_and_mapped(key: str) -> None:
    data = ('{"broken": "café Zürich 😀", ' * 80).encode()
    for c in chunks_of(key, data):
        assert piece(data, c).decode() == c.text


@pytest.mark.parametrize(
    ("key", "data"),
    [
        ("page.html", "<html><body><p>café Zürich straße</p><p>日本語</p></body></html>".encode()),
        ("page.xml", "<a><b>café Zürich</b><c>straße</c></a>".encode()),
    ],
)
def test_derived_text_has_no_range(key: str, data: bytes) -> None:
    assert all(c.start_byte is c.end_byte is None for c in chunks_of(key, data))


def test_pdf_and_docx_have_no_range() -> None:
    assert byte_ranges("a.pdf", b"%PDF-1.4 ...", "text", ["text"]) == [None]
    assert byte_ranges("a.docx", b"PK\x03\x04 ...", "text", ["text"]) == [None]


def test_bytes_that_are_not_utf8_have_no_range() -> None:
    data = b"caf\xe9 au lait, not UTF-8 at all " * 30
    assert all(c.start_byte is None for c in chunks_of("latin1.txt", data))


def test_a_chunk_not_in_the_text_has_no_range() -> None:
    data = b"alpha beta gamma"
    assert byte_ranges("a.txt", data, "alpha beta gamma", ["beta", "zeta", "gamma"]) == [
        (6, 10),
        None,
        (11, 16),
    ]


PIECES = st.sampled_from(
    [
        *WORDS,
        " ",
        "  ",
        "\n",
        "\r\n",
        "\n\n\n\n",
        "\t",
        "ﬁ",
        "\uff21",
        "①",
        "e\u0301",
        "\x00",
        "\u00a0",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=400))
def test_any_text_file_maps_every_chunk(parts: list[str]) -> None:
    data = "".join(parts).encode()
    try:
        text = extract_text("any.txt", data)
    except Exception:  # no text, or too many control characters: nothing to chunk
        return
    for c in chunk_item("any.txt", data, text, TOKENS, 64, 10):
        assert c.text in extract_text("any.txt", piece(data, c))


FILES = {
    "notes.md": sentences(30).encode(),
    "people.csv": csv_bytes(ROWS),
    "data.json": json.dumps({"k": [f"{w} {i}" for i, w in enumerate(WORDS * 20)]}).encode(),
    "page.html": f"<p>{sentences(12)}</p>".encode(),
}


async def test_item_chunks_route_returns_byte_ranges(client: httpx.AsyncClient) -> None:  # noqa: F811
    """Through HTTP: ranges for text and CSV, null for JSON and HTML (as for chunks indexed
    before ranges were kept), and the body validates as the SDK's ItemChunksResponse."""
    api = "/accounts/acc/ai-search"
    resp = await client.post(
        f"{api}/instances", json={"id": "spans", "chunk_size": 64}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    items = f"{api}/namespaces/default/instances/spans/items"
    for name, data in FILES.items():
        resp = await client.post(
            items, files={"file": (name, data)}, data={"wait_for_completion": "true"}, headers=AUTH
        )
        assert resp.status_code == 200 and resp.json()["result"]["status"] == "completed", resp.text
        item = resp.json()["result"]
        resp = await client.get(f"{items}/{item['id']}/chunks", params={"limit": 100}, headers=AUTH)
        assert resp.status_code == 200, resp.text
        raw = resp.json()["result"]
        TypeAdapter(ItemChunksResponse).validate_python(raw, strict=True)
        assert len(raw) > 1 and all(
            set(c["item"]["metadata"]).isdisjoint({"text", "start_byte"}) for c in raw
        )
        for c in raw:
            if name.endswith((".json", ".html")):
                assert c["start_byte"] is None and c["end_byte"] is None
            elif name.endswith(".md"):
                assert data[c["start_byte"] : c["end_byte"]].decode() == c["text"]
            else:
                assert c["text"].split(": ")[-1] in data[c["start_byte"] : c["end_byte"]].decode()
    found = await client.post(f"{api}/instances/spans/search", json={"query": "café"}, headers=AUTH)
    chunk = found.json()["result"]["chunks"][0]
    assert "start_byte" not in chunk["item"]["metadata"] and "end_byte" not in chunk
