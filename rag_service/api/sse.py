"""Server-sent events: one `data:` line per JSON event, sent as it is produced."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from litestar.response import Stream

DONE = b"data: [DONE]\n\n"


def sse(data: Any, event: str | None = None) -> bytes:
    """One event; `event` names it (`event: chunks`), else it is a plain message."""
    named = f"event: {event}\n" if event else ""
    return f"{named}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def event_stream(events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> Stream:
    return Stream(
        events,
        media_type="text/event-stream",
        # Litestar applies the handler's JSON media type unless the header is set explicitly.
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        },
    )
