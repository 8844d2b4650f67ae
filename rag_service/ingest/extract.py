"""Plain text out of a document's bytes, chosen by the key's file extension.

Every extractor runs in time linear in its input and stops early at the caps of `ExtractLimits`
(pages, characters of text, uncompressed DOCX XML). Wall-clock time and memory are bounded by
running extraction in a worker process: see rag_service.ingest.isolate."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import logging
import os
import posixpath
import re
import threading
import unicodedata
import zipfile
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

from bs4 import UnicodeDammit
from lxml import etree
from pypdf import PageObject, PasswordType, PdfReader
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject

from rag_service.errors import ExtractError, NoTextError

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_BREAK = "\ue000"  # private-use marker for HTML block boundaries
_HTML_DROP = frozenset(["script", "style", "noscript", "template", "meta", "link", "base", "svg"])
_HTML_BLOCKS = re.compile(
    r"^(address|article|aside|blockquote|br|dd|div|dl|dt|fieldset|fig\w+|footer|form|h[1-6]"
    r"|header|hr|li|main|nav|ol|p|pre|section|table|td|th|title|tr|ul)$"
)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_MIB = 1024 * 1024
_pdf_log_lock = threading.Lock()
_pdf_log_depth = 0
_pdf_log_saved = logging.NOTSET


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on extracting one item. The caps on pages, characters and DOCX XML are enforced
    by the extractors themselves (also when `extract_text` runs in-process); the wall-clock time
    and the memory by the worker process that runs them (rag_service.ingest.isolate)."""

    timeout_s: float = 30.0  # wall-clock time for one item, in its worker process
    memory_mib: int = 1024  # address space (RLIMIT_AS) of the worker process while it extracts
    max_pages: int = 2000  # pages of a PDF
    # characters of extracted text; matches the default 10 MiB cap on text files, and bounds
    # what the chunker and the embedder are asked to take on (about 2.5 M tokens)
    max_chars: int = 10_000_000
    max_docx_xml_mib: int = 50  # uncompressed XML read from a DOCX (document, headers, footers)
    workers: int = 0  # worker processes running extractions at once; 0: one per CPU

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.memory_mib > 0 and self.max_pages > 0):
            raise ValueError("extraction limits must be positive")
        if self.max_chars <= 0 or self.max_docx_xml_mib <= 0 or self.workers < 0:
            raise ValueError("extraction limits must be positive")

    @property
    def pool_size(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)


DEFAULT_LIMITS = ExtractLimits()


def too_many_pages(limit: int) -> str:
    return f"more than {limit} pages"


def too_much_text(limit: int) -> str:
    return f"more than {limit} characters of text"


class _Budget:
    """Characters of text an extractor may still produce; ExtractError once they run out."""

    def __init__(self, max_chars: int) -> None:
        self.limit = max_chars
        self.left = max_chars

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise ExtractError(too_much_text(self.limit))


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


def _pdf_ref(value: Any) -> Hashable | None:
    """A hashable name for an indirect object, or an array of them; None for anything else."""
    if isinstance(value, IndirectObject):
        return (value.idnum, value.generation)
    if isinstance(value, ArrayObject) and all(isinstance(v, IndirectObject) for v in value):
        return tuple((v.idnum, v.generation) for v in value)
    return None


def _pdf_content_key(page: PageObject) -> Hashable | None:
    """What a page's text depends on (its content streams and its resources), when both are
    cheap to name: a page listed many times, or a big content stream shared by many pages, is
    then read once (its text still counts against the character budget each time)."""
    if "/Contents" not in page or "/Resources" not in page:
        return None
    contents = _pdf_ref(page.raw_get("/Contents"))
    resources: Any = page.raw_get("/Resources")
    if isinstance(resources, IndirectObject):
        named: Hashable | None = _pdf_ref(resources)
    elif isinstance(resources, DictionaryObject) and len(resources) <= 16:
        named = repr(resources)  # inline resources: equal when their text is
        named = named if len(named) <= 4096 else None
    else:
        named = None
    return None if contents is None or named is None else (contents, named)


def _pdf(data: bytes, limits: ExtractLimits) -> str:
    if b"%PDF-" not in data[:1024]:
        raise ExtractError("not a PDF (no %PDF header)")
    with _quiet_pypdf():
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            encrypted = reader.is_encrypted
        except MemoryError:
            raise
        except Exception as exc:
            raise ExtractError(f"damaged PDF: {_short(exc)}") from exc
        if encrypted:
            try:
                opened = reader.decrypt("") != PasswordType.NOT_DECRYPTED
            except MemoryError:
                raise
            except Exception as exc:
                raise ExtractError(f"encrypted PDF: cannot decrypt ({_short(exc)})") from exc
            if not opened:
                raise ExtractError("encrypted PDF: needs a password")
        try:
            count = len(reader.pages)  # walks the page tree once (pypdf bounds its size)
        except MemoryError:
            raise
        except Exception as exc:
            raise ExtractError(f"damaged PDF: {_short(exc)}") from exc
        if count > limits.max_pages:
            raise ExtractError(too_many_pages(limits.max_pages))
        if not count:
            raise ExtractError("damaged PDF: no pages")
        budget = _Budget(limits.max_chars)
        texts: list[str] = []
        seen: dict[Hashable, str] = {}  # pages that share content and resources are read once
        first_error: Exception | None = None
        for number, page in enumerate(reader.pages, 1):
            if number > limits.max_pages:
                raise ExtractError(too_many_pages(limits.max_pages))
            key = _pdf_content_key(page)
            if key is not None and key in seen:
                text = seen[key]
            else:
                try:
                    text = page.extract_text() or ""
                except MemoryError:
                    raise
                except Exception as exc:
                    first_error = first_error or exc
                    continue
                if key is not None:
                    seen[key] = text
            budget.take(len(text) + 2)
            texts.append(text)
        if first_error is not None and not texts:
            raise ExtractError(f"damaged PDF: {_short(first_error)}")
        return "\n\n".join(texts)


# DOCX: word/document.xml (and the headers and footers it uses) parsed as a stream. Each
# paragraph is reduced to its text as soon as it ends, and each top-level block is turned into
# lines and dropped, so memory follows the largest table, not the document.
_P, _TBL, _SDT, _TR, _TC = (f"{_W}{t}" for t in ("p", "tbl", "sdt", "tr", "tc"))
_SDT_CONTENT, _SECT_PR, _P_PR = f"{_W}sdtContent", f"{_W}sectPr", f"{_W}pPr"
_BODY, _DOCX_ROOTS = f"{_W}body", frozenset(f"{_W}{t}" for t in ("body", "hdr", "ftr"))
_RUN, _HYPERLINK, _T, _BR = f"{_W}r", f"{_W}hyperlink", f"{_W}t", f"{_W}br"
_RUN_CHARS = {f"{_W}tab": "\t", f"{_W}ptab": "\t", f"{_W}cr": "\n", f"{_W}noBreakHyphen": "-"}
_HF_TYPES = ("default", "first", "even")


def _run_text(run: Any, parts: list[str]) -> None:
    """A run's text as python-docx reads it: w:t, tabs, line breaks (not page breaks)."""
    for child in run.iterchildren():
        tag = child.tag
        if tag == _T:
            parts.append(child.text or "")
        elif tag == _BR:
            if child.get(f"{_W}type", "textWrapping") == "textWrapping":
                parts.append("\n")
        elif tag in _RUN_CHARS:
            parts.append(_RUN_CHARS[tag])


def _paragraph_text(p: Any) -> str:
    """The text of a paragraph's runs, also those inside hyperlinks (as python-docx)."""
    parts: list[str] = []
    for child in p.iterchildren():
        if child.tag == _RUN:
            _run_text(child, parts)
        elif child.tag == _HYPERLINK:
            for run in child.iterchildren(_RUN):
                _run_text(run, parts)
    return "".join(parts)


def _docx_block(el: Any) -> Iterator[str]:
    """Lines of one paragraph (already reduced to its text), table or content control."""
    if el.tag == _P:
        yield str(el.text or "")
    elif el.tag == _TBL:
        for row in el.iterchildren(_TR):
            cells = ("\n".join(_docx_blocks(tc)).strip() for tc in row.iterchildren(_TC))
            yield " | ".join(cell for cell in cells if cell)
    elif el.tag == _SDT:
        for content in el.iterchildren(_SDT_CONTENT):
            yield from _docx_blocks(content)


def _docx_blocks(parent: Any) -> Iterator[str]:
    """Text of the paragraphs and (nested) tables under a body, cell, header or footer."""
    for el in parent.iterchildren():
        yield from _docx_block(el)


def _is_section(sect_pr: Any) -> bool:
    """A body's sectPr, or a section break's (body/p/pPr/sectPr), as python-docx's sections."""
    parent = sect_pr.getparent()
    if parent is None or parent.tag == _BODY:
        return parent is not None
    paragraph = parent.getparent() if parent.tag == _P_PR else None
    holder = paragraph.getparent() if paragraph is not None and paragraph.tag == _P else None
    return holder is not None and holder.tag == _BODY


class _DocxReader:
    """Reads parts of a DOCX archive as XML streams, at most `cap` bytes uncompressed in all."""

    def __init__(self, archive: zipfile.ZipFile, limits: ExtractLimits, budget: _Budget) -> None:
        self.archive = archive
        self.mib = limits.max_docx_xml_mib
        self.left = limits.max_docx_xml_mib * _MIB
        self.budget = budget

    def has(self, name: str) -> bool:
        try:
            self.archive.getinfo(name)
        except KeyError:
            return False
        return True

    def _too_large(self, name: str) -> ExtractError:
        return ExtractError(
            f"{PurePosixPath(name).name} is larger than {self.mib} MiB uncompressed"
        )

    def chunks(self, name: str) -> Iterator[bytes]:
        info = self.archive.getinfo(name)
        if info.file_size > self.mib * _MIB:  # the declared size; zipfile never reads past it
            raise self._too_large(name)
        read = 0
        with self.archive.open(info) as stream:
            while chunk := stream.read(256 * 1024):
                read += len(chunk)
                self.left -= len(chunk)
                if read > self.mib * _MIB:
                    raise self._too_large(name)
                if self.left < 0:
                    raise ExtractError(
                        f"the DOCX's parts are larger than {self.mib} MiB uncompressed"
                    )
                yield chunk

    def _parser(self) -> Any:
        return etree.XMLPullParser(
            events=("end",),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )

    def relationships(self, name: str) -> dict[str, tuple[str, str]]:
        """Id -> (type, part name) of the relationships of part `name` (none if it has none)."""
        folder, base = posixpath.split(name)
        rels_name = posixpath.join(folder, "_rels", f"{base}.rels")
        if not self.has(rels_name):
            return {}
        parser = self._parser()
        for chunk in self.chunks(rels_name):
            parser.feed(chunk)
        root = parser.close()
        found: dict[str, tuple[str, str]] = {}
        for rel in root.iterchildren(_PKG_REL):
            target = rel.get("Target") or ""
            if rel.get("TargetMode") == "External" or not target:
                continue
            part = posixpath.normpath(posixpath.join("/" + folder, target)).lstrip("/")
            found[rel.get("Id") or ""] = (rel.get("Type") or "", part)
        return found

    def blocks(self, name: str, sections: list[dict[tuple[str, str], str]] | None) -> list[str]:
        """Lines of a document, header or footer part; the header and footer references of
        each section are added to `sections` (when given) as {(kind, type): relationship id}."""
        lines: list[str] = []
        budget = self.budget

        def ended(el: Any) -> None:
            tag = el.tag
            if tag == _P:
                text = _paragraph_text(el)
                el.clear()
                el.text = text
            elif tag == _SECT_PR and sections is not None and _is_section(el):
                refs: dict[tuple[str, str], str] = {}
                for ref in el.iterchildren(f"{_W}headerReference", f"{_W}footerReference"):
                    kind = "header" if ref.tag.endswith("headerReference") else "footer"
                    refs[kind, ref.get(f"{_W}type", "default")] = ref.get(f"{_R}id") or ""
                sections.append(refs)
            parent = el.getparent()
            if parent is not None and parent.tag in _DOCX_ROOTS and tag in (_P, _TBL, _SDT):
                for line in _docx_block(el):
                    budget.take(len(line) + 1)
                    lines.append(line)
                el.clear()
                while el.getprevious() is not None:
                    del parent[0]

        parser = self._parser()
        for chunk in self.chunks(name):
            parser.feed(chunk)
            for _, el in parser.read_events():
                ended(el)
        parser.close()
        for _, el in parser.read_events():
            ended(el)
        return lines


def _docx(data: bytes, limits: ExtractLimits) -> str:
    if not data.startswith(b"PK\x03\x04"):
        raise ExtractError("not a DOCX (not a zip archive)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ExtractError(f"not a DOCX: damaged zip archive ({_short(exc)})") from exc
    budget = _Budget(limits.max_chars)
    with archive:
        reader = _DocxReader(archive, limits, budget)
        try:
            main = [
                part
                for kind, part in reader.relationships("").values()
                if kind.endswith("/officeDocument")
            ]
        except etree.XMLSyntaxError as exc:
            raise ExtractError(f"damaged DOCX: {_short(exc)}") from exc
        name = next((part for part in main if reader.has(part)), "word/document.xml")
        if not reader.has(name):
            raise ExtractError("not a DOCX: no word/document.xml in the zip archive")
        sections: list[dict[tuple[str, str], str]] = []
        try:
            body = reader.blocks(name, sections)
            parts = reader.relationships(name)
            headers: list[str] = []
            footers: list[str] = []
            texts: dict[str, str] = {}
            for refs in sections:
                for kind, out in (("header", headers), ("footer", footers)):
                    for which in _HF_TYPES:
                        _, part = parts.get(refs.get((kind, which), ""), ("", ""))
                        if not part or not reader.has(part):
                            continue  # linked to the previous section's, or missing
                        if part not in texts:
                            texts[part] = "\n".join(reader.blocks(part, None)).strip()
                        text = texts[part]
                        if text and text not in headers + footers:
                            out.append(text)
        except etree.XMLSyntaxError as exc:
            raise ExtractError(f"damaged DOCX: {_short(exc)}") from exc
        except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ExtractError(f"damaged DOCX: {_short(exc)}") from exc
    return "\n\n".join([*headers, "\n".join(body), *footers])


def _decode(data: bytes, limits: ExtractLimits | None = None) -> str:
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


def _csv(data: bytes, limits: ExtractLimits, delimiter: str = ",") -> str:
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
    budget = _Budget(limits.max_chars)  # column names are repeated on every row
    header = [h.strip() for h in rows[0]]
    lines = [", ".join(h for h in header if h)]
    for row in rows[1:]:
        named = [
            (header[i] if i < len(header) and header[i] else f"col{i + 1}", v)
            for i, v in enumerate(row)
        ]
        lines.append(", ".join(f"{n}: {v.strip()}" for n, v in named if v.strip()))
        budget.take(len(lines[-1]) + 1)
    return "\n".join(lines)


def _flatten_json(value: Any, budget: _Budget) -> str:
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
            budget.take(len(lines[-1]) + 1)  # paths are repeated on every line
    return "\n".join(lines)


def _json_text(text: str, budget: _Budget) -> str:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text  # broken JSON is still searchable as plain text
    return _flatten_json(value, budget)


def _json(data: bytes, limits: ExtractLimits) -> str:
    return _json_text(_decode(data), _Budget(limits.max_chars))


def _jsonl(data: bytes, limits: ExtractLimits) -> str:
    budget = _Budget(limits.max_chars)
    return "\n\n".join(
        _json_text(line, budget) for line in _decode(data).splitlines() if line.strip()
    )


@lru_cache(maxsize=1024)
def _html_block(tag: str) -> bool:
    return _HTML_BLOCKS.match(tag) is not None


class _HtmlText:
    """lxml parser target: the visible text of an HTML document, with _BREAK around block
    elements and for the newlines of <pre>. Built from parser events, without a tree, so it
    takes time linear in the document (and no depth limit loses deeply nested text)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.dropping = 0  # depth inside script, style and the like
        self.pre = 0  # depth inside <pre>

    def start(self, tag: str, attrib: object) -> None:
        name = tag.lower() if isinstance(tag, str) else ""
        if self.dropping or name in _HTML_DROP:
            self.dropping += 1
            return
        if name == "pre":
            self.pre += 1
        if _html_block(name):
            self.pieces.append(_BREAK)

    def end(self, tag: str) -> None:
        if self.dropping:
            self.dropping -= 1
            return
        name = tag.lower() if isinstance(tag, str) else ""
        if name == "pre" and self.pre:
            self.pre -= 1
        if _html_block(name):
            self.pieces.append(_BREAK)

    def data(self, text: str) -> None:
        if not self.dropping:
            self.pieces.append(text.replace("\n", _BREAK) if self.pre else text)

    def close(self) -> str:
        return "".join(self.pieces)


def _html(data: bytes, limits: ExtractLimits) -> str:
    markup = UnicodeDammit(data, is_html=True).unicode_markup  # honours <meta charset>
    source = (markup or data.decode("utf-8", "replace")).encode("utf-8", "surrogatepass")
    target = _HtmlText()
    parser = etree.HTMLParser(
        target=target,
        encoding="utf-8",
        no_network=True,
        remove_comments=True,
        remove_pis=True,
    )
    parser.feed(source)
    try:
        parser.close()
    except etree.XMLSyntaxError:
        if target.pieces:  # libxml2 complains about an empty document, nothing else
            raise
    flat = " ".join(target.close().split())
    return "\n".join(line for line in (s.strip() for s in flat.split(_BREAK)) if line)


def _xml(data: bytes, limits: ExtractLimits) -> str:
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


Handler = Callable[[bytes, ExtractLimits], str]
_HANDLERS: dict[str, tuple[str, Handler]] = {
    ".pdf": ("PDF", _pdf),
    ".docx": ("DOCX", _docx),
    **dict.fromkeys((".txt", ".md", ".markdown", ".rst", ".log"), ("text", _decode)),
    ".csv": ("CSV", _csv),
    ".tsv": ("TSV", lambda data, limits: _csv(data, limits, "\t")),
    ".json": ("JSON", _json),
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


def check_extractable(key: str, data: bytes) -> None:
    """The errors `extract_text` raises before reading the content: type and emptiness."""
    ext = _extension(key)
    if ext not in _HANDLERS:
        raise ExtractError(
            f"unsupported file type {ext[:32]!r}" if ext else "unsupported file type (no extension)"
        )
    if not data:
        raise NoTextError("empty file")


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text.replace("\v", "\n").replace("\f", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def extract_text(key: str, data: bytes, limits: ExtractLimits = DEFAULT_LIMITS) -> str:
    """The document's plain text; ExtractError if unreadable or over a cap of `limits` (pages,
    characters, DOCX XML size), NoTextError if it holds no text. Runs in the calling thread
    with no bound on time or memory: isolate.extract_isolated adds those."""
    check_extractable(key, data)
    label, handler = _HANDLERS[_extension(key)]
    try:
        raw = handler(data, limits)
        if len(raw) > limits.max_chars:
            raise ExtractError(too_much_text(limits.max_chars))
        text = _normalise(raw)
    except (ExtractError, MemoryError):
        raise
    except Exception as exc:
        raise ExtractError(f"damaged {label}: {_short(exc)}") from exc
    if len(text) > limits.max_chars:  # NFKC can lengthen text
        raise ExtractError(too_much_text(limits.max_chars))
    if not text:
        raise NoTextError("no extractable text")
    return text
