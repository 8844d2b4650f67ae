"""extract_text over the shared sample documents (driven by their MANIFEST) and inline inputs."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docx
import pypdf
import pytest

from rag_service.errors import ExtractError, NoTextError
from rag_service.ingest import extract as extract_module
from rag_service.ingest.extract import SUPPORTED_EXTENSIONS, extract_text, is_text_type

DOCS = Path(__file__).resolve().parents[3] / "shared" / "data" / "docs"
MANIFEST = DOCS / "MANIFEST.md"


def _manifest_rows() -> list[tuple[str, str, str | None]]:
    """(file, expected, phrase) for each row of the manifest's table."""
    if not MANIFEST.is_file():
        return []
    rows = []
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("file", "") or set(cells[0]) <= {"-"}:
            continue
        phrase = re.search(r'"([^"]+)"', cells[3])
        rows.append((cells[0], cells[2], phrase.group(1) if phrase else None))
    return rows


ROWS = _manifest_rows()
COMPLETED = [r for r in ROWS if r[1].startswith("completed")]
FAILING = [r for r in ROWS if not r[1].startswith("completed")]
# manifest wording -> what the error message must contain
KEYWORDS = {"no text": "no extractable text", "empty": "empty file"}


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def _read(name: str) -> bytes:
    return (DOCS / name).read_bytes()


def _one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message
    assert 0 < len(message) <= 200


@pytest.mark.skipif(not MANIFEST.is_file(), reason="shared sample documents not present")
def test_manifest_covers_every_sample_file() -> None:
    assert len(ROWS) == 24 and len(COMPLETED) == 17
    listed = {r[0] for r in ROWS}
    present = {
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*")
        if p.is_file() and p.name not in ("LICENSE", "MANIFEST.md")
    }
    assert listed == present


@pytest.mark.parametrize(("name", "expected", "phrase"), COMPLETED, ids=[r[0] for r in COMPLETED])
def test_manifest_completed(name: str, expected: str, phrase: str | None) -> None:
    text = extract_text(name, _read(name))
    assert text.strip()
    if phrase:
        assert _squash(phrase) in _squash(text)


@pytest.mark.parametrize(("name", "expected", "phrase"), FAILING, ids=[r[0] for r in FAILING])
def test_manifest_errors(name: str, expected: str, phrase: str | None) -> None:
    kind, _, problem = expected.partition(":")
    keyword = KEYWORDS.get(problem.strip(), problem.strip())
    error = NoTextError if "skipped" in kind else ExtractError
    with pytest.raises(error) as info:
        extract_text(name, _read(name))
    if error is ExtractError:
        assert not isinstance(info.value, NoTextError)
    assert keyword.lower() in info.value.message.lower()
    _one_line(info.value.message)


@pytest.mark.skipif(not MANIFEST.is_file(), reason="shared sample documents not present")
def test_ligatures_are_nfkc_normalised_and_pypdf_logger_restored() -> None:
    logger = logging.getLogger("pypdf")
    before = logger.level
    text = extract_text("crazyones-pdfa.pdf", _read("py-pdf-sample-files/crazyones-pdfa.pdf"))
    assert "misfits" in text and "\ufb01" not in text
    assert logger.level == before


@pytest.mark.skipif(not MANIFEST.is_file(), reason="shared sample documents not present")
def test_pdf_keeps_good_pages_and_fails_when_none_read(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _read("py-pdf-sample-files/pdflatex-outline.pdf")
    original = pypdf.PageObject.extract_text
    calls = iter(range(100))

    def flaky(self: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        if next(calls) % 2:
            raise ValueError("broken content stream")
        return original(self)

    monkeypatch.setattr(pypdf.PageObject, "extract_text", flaky)
    assert "Contents" in extract_text("outline.pdf", data)

    def broken(self: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        raise ValueError("broken content stream")

    monkeypatch.setattr(pypdf.PageObject, "extract_text", broken)
    with pytest.raises(ExtractError, match="damaged PDF: broken content stream"):
        extract_text("outline.pdf", data)


def _docx_bytes(build: Callable[[Any], None]) -> bytes:
    document = docx.Document()
    build(document)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_nested_tables_headers_footers_in_order() -> None:
    def build(document: Any) -> None:
        document.sections[0].header.paragraphs[0].text = "Running header"
        document.sections[0].footer.paragraphs[0].text = "Page footer"
        document.add_paragraph("First paragraph")
        table = document.add_table(rows=1, cols=2)
        table.cell(0, 0).paragraphs[0].text = "outer cell"
        inner = table.cell(0, 1).add_table(rows=1, cols=1)
        inner.cell(0, 0).paragraphs[0].text = "deeply nested"
        document.add_paragraph("Last paragraph")
        second = document.add_section()
        second.header.is_linked_to_previous = False
        second.header.paragraphs[0].text = "Running header"  # identical: kept once

    text = extract_text("report.docx", _docx_bytes(build))
    order = ["Running header", "First paragraph", "outer cell", "deeply nested", "Last paragraph"]
    positions = [text.index(part) for part in [*order, "Page footer"]]
    assert positions == sorted(positions)
    assert text.count("Running header") == 1


def test_docx_that_is_another_zip() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ExtractError, match="not a DOCX"):
        extract_text("x.docx", buffer.getvalue())


def test_html_drops_scripts_keeps_title_and_inline_text() -> None:
    html = (
        b"<html><head><title>Page Title</title><meta name='x' content='meta junk'>"
        b"<style>body{color:red}</style><script>var secret = 1;</script></head>"
        b"<body><h1>Heading</h1><p>Hello <b>big</b>\n   world &amp; more</p>"
        b"<noscript>enable js</noscript><pre>line one\nline two</pre></body></html>"
    )
    text = extract_text("page.HTML", html)
    assert text.splitlines()[:3] == ["Page Title", "Heading", "Hello big world & more"]
    assert "line one\nline two" in text
    for junk in ("secret", "color", "enable js", "meta junk"):
        assert junk not in text
    with pytest.raises(NoTextError):
        extract_text("x.htm", b"<html><script>only()</script></html>")
    assert extract_text("l1.html", b'<meta charset="latin-1"><p>caf\xe9</p>') == "caf\xe9"


def test_xml_text_and_entities_not_expanded() -> None:
    text = extract_text("a.xml", b"<r><!-- hidden --><t>alpha</t> tail <t>beta</t><?pi x?></r>")
    assert text.split() == ["alpha", "tail", "beta"]
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
        b'<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<lolz>start &lol3; &xxe; end</lolz>"
    )
    text = extract_text("bomb.xml", bomb)
    assert "lollol" not in text and "root:" not in text and len(text) < 100
    assert "start" in text and "end" in text
    with pytest.raises(ExtractError, match="malformed XML") as info:
        extract_text("bad.xml", b"<r><unclosed></r>")
    _one_line(info.value.message)


def test_csv_and_tsv_rows_become_labelled_lines() -> None:
    text = extract_text("people.csv", b'name,city\r\nAda,London\r\n"Grace, H",\r\n')
    assert text.splitlines() == ["name, city", "name: Ada, city: London", "name: Grace, H"]
    assert extract_text("t.tsv", b"k\tv\nalpha\t1\n").splitlines()[1] == "k: alpha, v: 1"
    huge = b'h\n"' + b"x" * 200_000 + b'"\n'  # over csv's field limit: raw text is kept
    assert extract_text("big.csv", huge).startswith('h\n"xxx')


def test_json_valid_broken_deep_and_lines() -> None:
    doc = {"title": "Café guide", "items": [{"name": "espresso", "price": 2.5}], "ok": True}
    text = extract_text("menu.json", json.dumps(doc).encode())
    assert text.splitlines() == [
        "title: Café guide",
        "items[0].name: espresso",
        "items[0].price: 2.5",
        "ok: true",
    ]
    assert extract_text("b.json", b'{"a": "unterminated') == '{"a": "unterminated'
    assert extract_text("deep.json", b"[" * 100_000).startswith("[[[")
    lines = extract_text("x.jsonl", b'{"a": "one"}\nnot json\n{"b": ["two"]}\n')
    assert lines.split("\n\n") == ["a: one", "not json", "b[0]: two"]
    with pytest.raises(NoTextError):
        extract_text("e.json", b"{}")


def test_text_encodings() -> None:
    assert extract_text("u16.txt", "héllo wörld".encode("utf-16")) == "héllo wörld"
    assert extract_text("u16be.txt", b"\xfe\xff" + "big end".encode("utf-16-be")) == "big end"
    assert extract_text("bom.md", b"\xef\xbb\xbf# Title") == "# Title"
    assert extract_text("latin1.txt", "caf\xe9 au lait".encode("latin-1")) == "caf\ufffd au lait"


def test_binary_garbage_is_rejected() -> None:
    garbage = random.Random(0).randbytes(4096)
    with pytest.raises(ExtractError, match="binary data"):
        extract_text("garbage.txt", garbage)
    with pytest.raises(ExtractError, match="binary data"):
        extract_text("u16-no-bom.txt", "plain ascii text".encode("utf-16-le"))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("notes.xyz", "unsupported file type '.xyz'"),
        ("archive.tar.gz", "unsupported file type '.gz'"),
        ("README", "unsupported file type (no extension)"),
        ("dir.d/Makefile", "unsupported file type (no extension)"),
    ],
)
def test_unsupported_extensions(key: str, message: str) -> None:
    with pytest.raises(ExtractError) as info:
        extract_text(key, b"some text")
    assert info.value.message == message
    assert not isinstance(info.value, NoTextError)


def test_uppercase_extension_and_pdf_magic() -> None:
    assert extract_text("NOTES.TXT", b"Upper case works") == "Upper case works"
    with pytest.raises(ExtractError, match="not a PDF"):
        extract_text("Scan.PDF", b"hello, I am not a PDF")
    with pytest.raises(ExtractError, match="not a DOCX"):
        extract_text("Letter.DOCX", b"plain text")


def test_normalisation() -> None:
    raw = "\ufb01le \uff21\uff22\uff23  \r\nnext\x00 line\t \r\n\r\n\r\n\r\nend\n".encode()
    assert extract_text("n.txt", raw) == "file ABC\nnext line\n\nend"


def test_empty_and_blank_inputs_are_no_text() -> None:
    with pytest.raises(NoTextError, match="empty file"):
        extract_text("a.pdf", b"")
    with pytest.raises(NoTextError, match="no extractable text"):
        extract_text("blank.md", b" \n\t\r\n ")
    assert issubclass(NoTextError, ExtractError)


def test_unexpected_parser_errors_become_one_line_extract_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line " + "x" * 500)

    monkeypatch.setattr(extract_module, "_HtmlText", explode)
    with pytest.raises(ExtractError) as info:
        extract_text("p.html", b"<p>hi</p>")
    assert info.value.message.startswith("damaged HTML: boom second line")
    _one_line(info.value.message)


def test_supported_extensions_and_text_types() -> None:
    assert {
        ".pdf",
        ".docx",
        ".txt",
        ".md",
        ".csv",
        ".json",
        ".html",
        ".xml",
    } <= SUPPORTED_EXTENSIONS
    assert is_text_type("notes/README.MD") and is_text_type("data.csv")
    assert not is_text_type("paper.pdf") and not is_text_type("letter.docx")
    assert not is_text_type("image.png") and not is_text_type("README")
