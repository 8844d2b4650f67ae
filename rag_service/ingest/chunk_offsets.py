"""Where each chunk lies in its item's original bytes: AI Search's `start_byte` / `end_byte`.

The extractor hands the chunker normalised text (rag_service.ingest.extract: NFKC, newlines
unified, control characters dropped, trailing blanks and extra blank lines removed). Here that
normalisation is replayed on the item's own decoded bytes while keeping track of where every
character came from, and the replay is only trusted when it yields exactly the extractor's text;
a chunk then maps to the byte range of the characters it was made from. What each type gives:

- text, Markdown, reStructuredText, logs (and CSV or JSON the extractor kept as raw text because
  it could not parse it): the chunk's range, whose bytes decode to the chunk's text up to that
  normalisation (verbatim when the chunk's stretch of the file needed none).
- CSV, TSV: rows are rewritten as `column: value` lines, so a chunk's range spans the rows its
  lines came from (the header included when the chunk holds the header line).
- JSON, JSON Lines: None. Values are flattened into `path: value` lines and the JSON parser
  does not report where a value stood in the file.
- HTML, XML, PDF, DOCX: None. Their text is derived (markup dropped, pages or XML parts read),
  with no character-to-byte map.
- Any type: None when the bytes are not strict UTF-8 or UTF-16 with a BOM (the extractor then
  decoded with replacement characters) or when the replay does not match the extractor's text.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

Span = tuple[int, int]
START_BYTE, END_BYTE = "start_byte", "end_byte"

_VERBATIM = frozenset({".txt", ".md", ".markdown", ".rst", ".log", ".json", ".jsonl", ".ndjson"})
_ROWS = {".csv": ",", ".tsv": "\t"}
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_NEWLINES = re.compile(r"\r\n?")
_CONTROLS = re.compile(r"[\v\f]|[\x00-\x08\x0e-\x1f\x7f]+")
# Blanks ending a line; the look-behind keeps a long run of blanks inside a line linear.
_TRAILING_BLANKS = re.compile(r"(?<![^\S\n])[^\S\n]++(?=\n|\Z)")
_BLANK_LINES = re.compile(r"\n{3,}")
_LINE_BREAKS = frozenset("\r\n\v\f")


@dataclass(frozen=True)
class _Edit:
    """Output characters [out_start, out_end) replaced input characters [src_start, src_end)."""

    out_start: int
    out_end: int
    src_start: int
    src_end: int


class _Step:
    """One rewrite of a string, able to trace an output character back to its input."""

    def __init__(self, edits: list[_Edit]) -> None:
        self.edits = edits
        self.starts = [e.out_start for e in edits]

    def _edit_before(self, pos: int) -> _Edit | None:
        i = bisect_right(self.starts, pos) - 1
        return self.edits[i] if i >= 0 else None

    def start_of(self, pos: int) -> int:
        """Input position where output character `pos` comes from (its first character)."""
        e = self._edit_before(pos)
        if e is None:
            return pos
        return e.src_start if pos < e.out_end else pos - e.out_end + e.src_end

    def end_of(self, pos: int) -> int:
        """Input position just past what output character `pos` comes from."""
        e = self._edit_before(pos)
        if e is None:
            return pos + 1
        return e.src_end if pos < e.out_end else pos + 1 - e.out_end + e.src_end


def _rewrite(text: str, replacements: Iterable[tuple[int, int, str]]) -> tuple[str, _Step]:
    """`text` with ordered, non-overlapping (start, end, new) replacements applied."""
    pieces: list[str] = []
    edits: list[_Edit] = []
    last = out = 0
    for start, end, new in replacements:
        pieces += (text[last:start], new)
        out += start - last
        edits.append(_Edit(out, out + len(new), start, end))
        out, last = out + len(new), end
    pieces.append(text[last:])
    return "".join(pieces), _Step(edits)


def _subs(pattern: re.Pattern[str], text: str, new: str) -> Iterator[tuple[int, int, str]]:
    return ((m.start(), m.end(), new) for m in pattern.finditer(text))


def _newline_edits(text: str) -> Iterator[tuple[int, int, str]]:
    return _subs(_NEWLINES, text, "\n")


def _control_edits(text: str) -> Iterator[tuple[int, int, str]]:
    """Vertical tabs and form feeds become newlines, other control characters go."""
    for m in _CONTROLS.finditer(text):
        yield m.start(), m.end(), "\n" if m[0] in "\v\f" else ""


def _trailing_blank_edits(text: str) -> Iterator[tuple[int, int, str]]:
    return _subs(_TRAILING_BLANKS, text, "")


def _blank_line_edits(text: str) -> Iterator[tuple[int, int, str]]:
    return _subs(_BLANK_LINES, text, "\n\n")


def _nfkc_edits(text: str) -> Iterator[tuple[int, int, str]]:
    """NFKC, replayed on the runs of non-ASCII characters with the ASCII character before each
    (a normalisation boundary lies before every ASCII character); a run is replaced character by
    character when that gives the same result, else as a whole."""
    for m in _NON_ASCII_RUN.finditer(text):
        start = max(m.start() - 1, 0)
        run = text[start : m.end()]
        if unicodedata.is_normalized("NFKC", run):
            continue
        whole = unicodedata.normalize("NFKC", run)
        each = [unicodedata.normalize("NFKC", ch) for ch in run]
        if "".join(each) != whole:
            yield start, m.end(), whole
            continue
        for i, (ch, new) in enumerate(zip(run, each, strict=True)):
            if ch != new:
                yield start + i, start + i + 1, new


def _strip_edits(text: str) -> list[tuple[int, int, str]]:
    """Leading and trailing whitespace goes."""
    lead, kept = len(text) - len(text.lstrip()), len(text.rstrip())
    if lead >= kept:
        return [(0, len(text), "")] if text else []
    return [e for e in ((0, lead, ""), (kept, len(text), "")) if e[0] < e[1]]


def _normalise_traced(raw: str) -> tuple[str, list[_Step]]:
    """The extractor's `_normalise`, step by step, with the steps kept to trace positions."""
    steps: list[_Step] = []
    text = raw
    for edits in (
        _nfkc_edits,
        _newline_edits,
        _control_edits,
        _trailing_blank_edits,
        _blank_line_edits,
        _strip_edits,
    ):
        text, step = _rewrite(text, edits(text))
        steps.append(step)
    return text, steps


def _trace(steps: Sequence[_Step], span: Span) -> Span:
    """A span of the normalised text as the span of the raw text it was made from."""
    start, end = span
    for step in reversed(steps):
        start, end = step.start_of(start), step.end_of(end - 1)
    return start, end


def _decode(data: bytes) -> tuple[str, str, int] | None:
    """The bytes as text, with the codec and BOM length to count bytes again; None unless they
    decode strictly (the extractor replaces invalid UTF-8, which breaks the byte count)."""
    codec, bom = "utf-8", len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    if data.startswith(codecs.BOM_UTF16_LE):
        codec, bom = "utf-16-le", 2
    elif data.startswith(codecs.BOM_UTF16_BE):
        codec, bom = "utf-16-be", 2
    try:
        return data[bom:].decode(codec), codec, bom
    except UnicodeDecodeError:
        return None


def _byte_spans(raw: str, codec: str, bom: int, spans: Sequence[Span]) -> list[Span]:
    """Character spans of `raw` as byte spans of its encoding (after `bom` bytes)."""
    offsets: dict[int, int] = {}
    at, count = 0, bom
    for pos in sorted({p for span in spans for p in span}):
        count += len(raw[at:pos].encode(codec))
        offsets[pos], at = count, pos
    return [(offsets[a], offsets[b]) for a, b in spans]


def text_spans(text: str, chunks: Sequence[str]) -> list[Span | None]:
    """Where each chunk (a stretch of `text`, in order) lies in `text`; None if it does not."""
    spans: list[Span | None] = []
    cursor = 0
    for chunk in chunks:
        at = text.find(chunk, cursor)
        spans.append(None if at < 0 else (at, at + len(chunk)))
        cursor = cursor if at < 0 else at + 1
    return spans


def _csv_rows(raw: str, delimiter: str) -> list[Span] | None:
    """The character span of each row the CSV extractor keeps (not blank); None when a value
    holds a line break (its lines no longer match the rows) or the file does not parse."""
    consumed = 0

    def lines() -> Iterator[str]:
        nonlocal consumed
        for line in io.StringIO(raw):
            consumed += len(line)
            yield line

    rows: list[Span] = []
    start = 0
    try:
        for row in csv.reader(lines(), delimiter=delimiter):
            if any(map(str.strip, row)):
                if any(_LINE_BREAKS.intersection(value) for value in row):
                    return None
                rows.append((start, start + len(raw[start:consumed].rstrip("\r\n"))))
            start = consumed
    except csv.Error:
        return None
    return rows


def _row_spans(text: str, raw: str, delimiter: str, spans: Sequence[Span]) -> list[Span] | None:
    """Chunk spans of CSV-derived text as the spans of the rows their lines came from."""
    rows = _csv_rows(raw, delimiter)
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    if rows is None or len(rows) != len(line_starts):
        return None

    def row(pos: int) -> Span:
        return rows[bisect_right(line_starts, pos) - 1]

    return [(row(a)[0], row(b - 1)[1]) for a, b in spans]


def _raw_spans(key: str, raw: str, text: str, spans: Sequence[Span]) -> list[Span] | None:
    """The chunk spans of the extractor's `text` as spans of the decoded file `raw`."""
    ext = PurePosixPath(key).suffix.lower()
    if ext not in _VERBATIM and ext not in _ROWS:
        return None
    normalised, steps = _normalise_traced(raw)
    if normalised == text:
        return [_trace(steps, span) for span in spans]
    if ext in _ROWS:
        return _row_spans(text, raw, _ROWS[ext], spans)
    return None


def byte_ranges(key: str, data: bytes, text: str, chunks: Sequence[str]) -> list[Span | None]:
    """Each chunk's (start_byte, end_byte) in `data`, the item's bytes, as far as the item's
    type allows (see the module's docstring); None where it is not known."""
    found = text_spans(text, chunks)
    decoded = _decode(data)
    located = [span for span in found if span is not None]
    if decoded is None or not located:
        return [None] * len(chunks)
    raw, codec, bom = decoded
    spans = _raw_spans(key, raw, text, located)
    if spans is None:
        return [None] * len(chunks)
    mapped = iter(_byte_spans(raw, codec, bom, spans))
    return [None if span is None else next(mapped) for span in found]
