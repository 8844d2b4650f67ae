"""The NegConstraint queries as `split_exclusions` searches them (the excluded part left out),
as a query set for dump.py (judged as the original queries).

Usage: .venv/bin/python bench/fusion/exclusions_set.py --beir /work/shared/data/beir/negconstraint \
    --out bench/fusion/sets-exclusions.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rag_service.evaluation.beir import load_beir
from rag_service.retrieve.exclusions import split_exclusions

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--beir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    beir = load_beir(args.beir)
    queries = {q: split_exclusions(t).positive for q, t in beir.queries.items()}
    name = f"{args.beir.name}+exclusions"
    sets = {name: {"queries": queries, "qrels": beir.qrels}}
    args.out.write_text(json.dumps(sets, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
