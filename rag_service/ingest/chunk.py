"""Stage 5: split text into chunks measured in the embedding model's tokens."""

from __future__ import annotations

from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag_service.ingest.chunk_offsets import byte_ranges
from rag_service.providers.protocols import Tokenizer

SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]


@dataclass(frozen=True)
class Chunk:
    """A chunk's text and its byte range in the item's bytes (None where not known)."""

    text: str
    start_byte: int | None = None
    end_byte: int | None = None


def chunk_text(text: str, tokenizer: Tokenizer, chunk_size: int, chunk_overlap: int) -> list[str]:
    """Recursive chunking at natural boundaries; no chunk exceeds `chunk_size` tokens. Every
    chunk is a stretch of `text` (the splits of one chunk are joined without separators)."""
    if chunk_overlap >= chunk_size:
        raise ValueError("chunk_overlap must be smaller than chunk_size")
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        length_function=tokenizer.count_tokens,
        separators=SEPARATORS,
        keep_separator="end",
        strip_whitespace=True,
    )
    return [c for c in splitter.split_text(text) if c.strip()]


def chunk_item(
    key: str, data: bytes, text: str, tokenizer: Tokenizer, chunk_size: int, chunk_overlap: int
) -> list[Chunk]:
    """The chunks of an item's extracted `text`, each with its byte range in `data`, the item's
    bytes, where its type allows (rag_service.ingest.chunk_offsets says which)."""
    texts = chunk_text(text, tokenizer, chunk_size, chunk_overlap)
    spans = byte_ranges(key, data, text, texts)
    return [Chunk(t, *(span or (None, None))) for t, span in zip(texts, spans, strict=True)]
