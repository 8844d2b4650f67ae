"""Markdown tables (nDCG@10 per set and method) from score.py's JSON files.

Usage: .venv/bin/python bench/fusion/table.py bench/fusion/results-or.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

COLUMNS = {
    "vector": "vector",
    "keyword": "keyword",
    "rrf (old: ties by id)": "rrf, old (ties by id)",
    "this code: rrf": "rrf, new (ties on evidence)",
    "max (old: ties by id)": "max, old",
    "this code: max": "max, new (z-scores)",
    "cc 0.5 min-max": "cc 0.5 min-max",
    "z-score sum": "z sum",
}


def table(view: str, results: dict[str, dict[str, dict[str, float]]]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in results.values())]
    lines = [
        "| set | " + " | ".join(COLUMNS[c] for c in cols) + " | new max - best single |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for name, res in results.items():
        best = max(res["vector"]["ndcg@10"], res["keyword"]["ndcg@10"])
        cells = [f"{res[c]['ndcg@10']:.4f}" if c in res else "" for c in cols]
        gap = res["this code: max"]["ndcg@10"] - best if "this code: max" in res else float("nan")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gap:+.4f} |")
    return f"{view}:\n\n" + "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    """Files are merged: a later file's methods add to (or replace) an earlier one's."""
    views: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    renamings: dict[str, dict[str, Any]] = {}
    for path in args.results:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        for view, results in data["views"].items():
            for name, res in results.items():
                views.setdefault(view, {}).setdefault(name, {}).update(res)
        for name, spread in data.get("renamings", {}).get("ndcg@10", {}).items():
            renamings.setdefault(name, {}).update(spread)
    for view, results in views.items():
        print(table(view, results))
    for name, spread in renamings.items():
        for label, s in spread.items():
            print(f"renamed ids, {name}, {label}: {s['min']:.4f}-{s['max']:.4f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+")
    main(p.parse_args())
