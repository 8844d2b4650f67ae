"""AI Search's item logs: what a sync did with each item (extracted, chunked, indexed, error,
skipped), kept as job log lines that name their item and are written a window at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from rag_service import records
from rag_service.models import JobLog, utcnow

Action = Literal["extracted", "chunked", "indexed", "error", "skipped"]
LEVELS: dict[Action, int] = {"error": records.ERROR, "skipped": records.WARNING}


def n_chunks(n: int) -> str:
    """A count of chunks in words: '1 chunk', '3 chunks'."""
    return f"{n} chunk{'s' * (n != 1)}"


def elapsed_ms(since: float) -> int:
    """Milliseconds since `since` (a `time.perf_counter()` reading)."""
    return round((time.perf_counter() - since) * 1000)


@dataclass
class ItemLog:
    """The item log lines of one window of a sync, in the order they happened."""

    instance_id: str
    job_id: str
    lines: list[JobLog] = field(default_factory=list)

    def add(
        self,
        key: str,
        action: Action,
        message: str,
        *,
        chunk_count: int | None = None,
        error_type: str | None = None,
        since: float | None = None,
    ) -> None:
        """One event of the item `key`; `since`: when the step began (perf_counter)."""
        details = {
            "action": action,
            "chunk_count": chunk_count,
            "error_type": error_type,
            "processing_time_ms": None if since is None else elapsed_ms(since),
        }
        self.lines.append(
            JobLog(
                job_id=self.job_id,
                item_id=records.item_id_for(self.instance_id, key),
                created_at=utcnow(),
                message_type=LEVELS.get(action, records.INFO),
                message=f"{key}: {message}",
                details=details,
            )
        )

    async def write(self, sessions: records.Sessions) -> None:
        """Store the lines gathered so far (one transaction) and start afresh."""
        lines, self.lines = self.lines, []
        await records.add_log_lines(sessions, self.job_id, lines)
