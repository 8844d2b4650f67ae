"""Stage 5: split text into chunks measured in the embedding model's tokens."""

from __future__ import annotations

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag_service.providers.protocols import Tokenizer

SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]


def chunk_text(text: str, tokenizer: Tokenizer, chunk_size: int, chunk_overlap: int) -> list[str]:
    """Recursive chunking at natural boundaries; no chunk exceeds `chunk_size` tokens."""
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
