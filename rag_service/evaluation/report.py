"""The eval result as a terminal table."""

from __future__ import annotations

from rich.table import Table

from rag_service.evaluation.metrics import METRICS
from rag_service.evaluation.run import EvalResult


def result_table(result: EvalResult) -> Table:
    """One row per measured mode (metrics, query time); the others and why, below."""
    title = (
        f"{result.dataset}: {result.documents} documents ({result.chunks} chunks, indexed in "
        f"{result.ingest_seconds:.0f} s), {result.queries} judged queries"
    )
    by_reason: dict[str, list[str]] = {}
    for mode, reason in result.not_measured.items():
        by_reason.setdefault(reason, []).append(mode)
    caption = "\n".join(f"{', '.join(modes)}: {why}" for why, modes in by_reason.items())
    table = Table("mode", *METRICS, "query s", title=title, caption=caption or None)
    for mode, scores in result.metrics.items():
        seconds = f"{result.query_seconds[mode]:.1f}"
        table.add_row(mode, *(f"{scores[m]:.4f}" for m in METRICS), seconds)
    return table
