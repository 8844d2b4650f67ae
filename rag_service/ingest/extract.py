"""Plain text out of a document's bytes, chosen by the key's file extension."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import logging
import re
import threading
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

import docx
from bs4 import BeautifulSoup, UnicodeDammit
from lxml import etree
from pypdf import PasswordType, PdfReader

from rag_service.errors import ExtractError, NoTextError

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MAX_DOCX_UNZIPPED = 256 * 1024 * 1024
_BREAK = "\ue000"  # private-use marker for HTML block boundaries
_HTML_DROP = ["script", "style", "noscript", "template", "meta", "link", "base", "svg"]
_HTML_BLOCKS = re.compile(
    r"^(address|article|aside|blockquote|br|dd|div|dl|dt|fieldset|fig\w+|footer|form|h[1-6]"
    r"|header|hr|li|main|nav|ol|p|pre|section|table|td|th|title|tr|ul)$"
)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_pdf_log_lock = threading.Lock()
_pdf_log_depth = 0
_pdf_log_saved = logging.NOTSET


def _short(exc: BaseException) -> str:
    """One line, at most 160 characters, describing `exc`."""
    return (" ".join(str(exc).split()) or type(exc).__name__)[:160]


@contextlib.contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """Raise pypdf's logger to ERROR while any PDF extraction runs (safe across threads)."""
    global _pdf_log_depth, _pdf_log_saved
    logger = logging.getLogger("pypdf")
    with _pdf_log_lock:
        if _pdf_log_depth == 0:
            _pdf_log_saved = logger.level
            logger.setLevel(logging.ERROR)
        _pdf_log_depth += 1
    try:
        yield
    finally:
        with _pdf_log_lock:
            _pdf_log_depth -= 1
            if _pdf_log_depth == 0:
                logger.setLevel(_pdf_log_saved)


def _pdf(data: bytes) -> str:
    if b"%PDF-" not in data[:1024]:
        raise ExtractError("not a PDF (no %PDF header)")
    with _quiet_pypdf():
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            encrypted = reader.is_encrypted
        except Exception as exc:
            raise ExtractError(f"damaged PDF: {_short(exc)}") from exc
        if encrypted:
            try:
                opened = reader.decrypt("") != PasswordType.NOT_DECRYPTED
            except Exception as exc:
                raise ExtractError(f"encrypted PDF: cannot decrypt ({_short(exc)})") from exc
            if not opened:
                raise ExtractError("encrypted PDF: needs a password")
        try:
            pages = list(reader.pages)
        except Exception as exc:
            raise ExtractError(f"damaged PDF: {_short(exc)}") from exc
        if not pages:
            raise ExtractError("damaged PDF: no pages")
        texts: list[str] = []
        first_error: Exception | None = None
        for page in pages:
            try:
                texts.append(page.extract_text() or "")
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None and not texts:
            raise ExtractError(f"damaged PDF: {_short(first_error)}")
        return "\n\n".join(texts)


def _docx_blocks(parent: Any) -> Iterator[str]:
    """Text of the paragraphs and (nested) tables under a body, cell, header or footer."""
    for el in parent.iterchildren():
        if el.tag == f"{_W}p":
            yield str(getattr(el, "text", None) or "")
        elif el.tag == f"{_W}tbl":
            for row in el.iterchildren(f"{_W}tr"):
                cells = ("\n".join(_docx_blocks(tc)).strip() for tc in row.iterchildren(f"{_W}tc"))
                yield " | ".join(cell for cell in cells if cell)
        elif el.tag == f"{_W}sdt":
            for content in el.iterchildren(f"{_W}sdtContent"):
                yield from _docx_blocks(content)


def _docx(data: bytes) -> str:
    if not data.startswith(b"PK\x03\x04"):
        raise ExtractError("not a DOCX (not a zip archive)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unzipped = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ExtractError(f"not a DOCX: damaged zip archive ({_short(exc)})") from exc
    if unzipped > _MAX_DOCX_UNZIPPED:
        raise ExtractError("damaged DOCX: unzipped size is implausibly large")
    try:
        doc = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ExtractError(f"damaged DOCX: {_short(exc)}") from exc
    except Exception as exc:  # missing parts, wrong content type: some other zip
        raise ExtractError(f"not a DOCX: {_short(exc)}") from exc
    headers: list[str] = []
    footers: list[str] = []
    for section in doc.sections:
        for kind, out in (("header", headers), ("footer", footers)):
            for prefix in ("", "first_page_", "even_page_"):
                part = getattr(section, prefix + kind)
                if part.is_linked_to_previous:
                    continue
                text = "\n".join(_docx_blocks(part._element)).strip()
                if text and text not in headers + footers:
                    out.append(text)
    body = "\n".join(_docx_blocks(doc.element.body))
    return "\n\n".join([*headers, body, *footers])


def _decode(data: bytes) -> str:
    """UTF-8 (BOM stripped) or UTF-16 with BOM; invalid UTF-8 kept with U+FFFD."""
    text: str | None = None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        with contextlib.suppress(UnicodeDecodeError):
            text = data.decode("utf-16")
    if text is None:
        text = data.decode("utf-8-sig", errors="replace")
    sample = text[:8192]
    bad = sum(1 for ch in sample if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f\v"))
    if bad > 0.3 * len(sample):
        raise ExtractError("binary data, not text")
    return text


def _csv(data: bytes, delimiter: str = ",") -> str:
    """Header line, then one `column: value, ...` line per row; raw text if unparseable."""
    text = _decode(data)
    try:
        rows = [
            r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(map(str.strip, r))
        ]
    except csv.Error:
        return text
    if len(rows) < 2:
        return text
    header = [h.strip() for h in rows[0]]
    lines = [", ".join(h for h in header if h)]
    for row in rows[1:]:
        named = [
            (header[i] if i < len(header) and header[i] else f"col{i + 1}", v)
            for i, v in enumerate(row)
        ]
        lines.append(", ".join(f"{n}: {v.strip()}" for n, v in named if v.strip()))
    return "\n".join(lines)


def _flatten_json(value: Any) -> str:
    """`path.to.key: value` lines (iterative, so deep nesting cannot overflow the stack)."""
    lines: list[str] = []
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, val = stack.pop()
        if isinstance(val, dict):
            stack.extend(reversed([(f"{path}.{k}" if path else str(k), v) for k, v in val.items()]))
        elif isinstance(val, list):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(val)]))
        else:
            rendered = val if isinstance(val, str) else json.dumps(val)
            lines.append(f"{path}: {rendered}" if path else rendered)
    return "\n".join(lines)


def _json_text(text: str) -> str:
    try:
        return _flatten_json(json.loads(text))
    except (ValueError, RecursionError):
        return text  # broken JSON is still searchable as plain text


def _jsonl(data: bytes) -> str:
    return "\n\n".join(_json_text(line) for line in _decode(data).splitlines() if line.strip())


def _html(data: bytes) -> str:
    markup = UnicodeDammit(data, is_html=True).unicode_markup  # honours <meta charset>
    soup = BeautifulSoup(markup or data.decode("utf-8", "replace"), "lxml")
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    for pre in soup.find_all("pre"):
        for piece in pre.find_all(string=True):
            piece.replace_with(piece.replace("\n", _BREAK))
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before(_BREAK)
        tag.insert_after(_BREAK)
    flat = " ".join(soup.get_text().split())
    return "\n".join(line for line in (s.strip() for s in flat.split(_BREAK)) if line)


def _xml(data: bytes) -> str:
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ExtractError(f"malformed XML: {_short(exc)}") from exc
    pieces: list[str] = []
    for el in root.iter():
        if isinstance(el.tag, str) and el.text:  # skips comments, PIs and unexpanded entities
            pieces.append(el.text)
        if el is not root and el.tail:
            pieces.append(el.tail)
    return "\n".join(p.strip() for p in pieces if p.strip())


_HANDLERS: dict[str, tuple[str, Callable[[bytes], str]]] = {
    ".pdf": ("PDF", _pdf),
    ".docx": ("DOCX", _docx),
    **dict.fromkeys((".txt", ".md", ".markdown", ".rst", ".log"), ("text", _decode)),
    ".csv": ("CSV", _csv),
    ".tsv": ("TSV", lambda data: _csv(data, "\t")),
    ".json": ("JSON", lambda data: _json_text(_decode(data))),
    ".jsonl": ("JSON Lines", _jsonl),
    ".ndjson": ("JSON Lines", _jsonl),
    ".html": ("HTML", _html),
    ".htm": ("HTML", _html),
    ".xml": ("XML", _xml),
}
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_HANDLERS)
_TEXT_LIKE = SUPPORTED_EXTENSIONS - {".pdf", ".docx"}


def _extension(key: str) -> str:
    return PurePosixPath(key).suffix.lower()


def is_text_type(key: str) -> bool:
    """True for plain-text-like types (text, markup, CSV, JSON), which get the larger size cap."""
    return _extension(key) in _TEXT_LIKE


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text.replace("\v", "\n").replace("\f", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def extract_text(key: str, data: bytes) -> str:
    """The document's plain text; ExtractError if unreadable, NoTextError if it holds none."""
    ext = _extension(key)
    if ext not in _HANDLERS:
        raise ExtractError(
            f"unsupported file type {ext[:32]!r}" if ext else "unsupported file type (no extension)"
        )
    if not data:
        raise NoTextError("empty file")
    label, handler = _HANDLERS[ext]
    try:
        text = _normalise(handler(data))
    except ExtractError:
        raise
    except Exception as exc:
        raise ExtractError(f"damaged {label}: {_short(exc)}") from exc
    if not text:
        raise NoTextError("no extractable text")
    return text
