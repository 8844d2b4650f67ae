"""The eval result as a terminal table."""

from __future__ import annotations

from rich.table import Table

from rag_service.evaluation.answers import AnswerEval
from rag_service.evaluation.metrics import METRICS
from rag_service.evaluation.run import EvalResult


def result_table(result: EvalResult) -> Table:
    """One row per measured mode (metrics, query time); the others and why, below."""
    title = (
        f"{result.dataset}: {result.documents} documents ({result.chunks} chunks, indexed in "
        f"{result.ingest_seconds:.0f} s), {result.queries} judged queries, keyword match mode "
        f"{result.settings.get('keyword_match_mode', '?')}"
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


def answers_table(result: AnswerEval) -> Table:
    """The answer metrics of one run, and which items missed."""
    m = result.metrics

    def share(key: str) -> str:
        return "-" if m[key] is None else f"{m[key]:.2f}"

    title = f"{result.dataset}: {result.questions} questions, answer model {result.model}"
    caption = f"wrong: {', '.join(m['wrong']) or '-'}; not abstained: "
    caption += ", ".join(m["not_abstained"]) or "-"
    table = Table("metric", "value", title=title, caption=caption)
    table.add_row("facts right (answerable)", share("facts_right"))
    table.add_row('"not found" when unanswerable', share("abstained_when_unanswerable"))
    table.add_row('"not found" when answerable', share("abstained_when_answerable"))
    table.add_row("looping answers", str(m["looping_answers"]))
    table.add_row("citation precision", share("citation_precision"))
    table.add_row("answers citing a file", share("answers_citing"))
    for key, label in (("first_token_s", "first token s"), ("answer_s", "answer s")):
        table.add_row(f"{label} p50 / p95", f"{m[key]['p50']:.2f} / {m[key]['p95']:.2f}")
    return table
