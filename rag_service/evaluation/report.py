"""The eval result as a terminal table."""

from __future__ import annotations

from rich.table import Table

from rag_service.evaluation.metrics import METRICS
from rag_service.evaluation.run import EvalResult


def result_table(result: EvalResult) -> Table:
    """One row per mode: its metrics and query time, or why it was not measured."""
    title = (
        f"{result.dataset}: {result.documents} documents ({result.chunks} chunks, indexed in "
        f"{result.ingest_seconds:.0f} s), {result.queries} judged queries"
    )
    table = Table("mode", *METRICS, "query s", title=title)
    for mode, scores in result.metrics.items():
        seconds = f"{result.query_seconds[mode]:.1f}"
        table.add_row(mode, *(f"{scores[m]:.4f}" for m in METRICS), seconds)
    for mode, reason in result.not_measured.items():
        table.add_row(mode, reason, *[""] * len(METRICS))
    return table
