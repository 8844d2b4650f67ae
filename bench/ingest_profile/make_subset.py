"""Write an N-passage BEIR subset of NegConstraint (seeded random sample; the queries judged on
those passages, with their qrels restricted to them).

Usage: python make_subset.py [--n 400] [--seed 17] [--out /tmp/negc400]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

SRC = Path("/work/shared/data/beir/negconstraint")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", type=Path, default=Path("/tmp/negc400"))
    ap.add_argument("--src", type=Path, default=SRC)
    a = ap.parse_args()
    rows = [
        json.loads(line) for line in (a.src / "corpus.jsonl").open(encoding="utf-8") if line.strip()
    ]
    keep = random.Random(a.seed).sample(rows, a.n)
    ids = {str(r["_id"]) for r in keep}
    (a.out / "qrels").mkdir(parents=True, exist_ok=True)
    with (a.out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for r in keep:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    qrels = []
    with (a.src / "qrels" / "test.tsv").open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t")):
            if n and row[1] in ids:
                qrels.append(row)
    qids = {r[0] for r in qrels}
    with (a.out / "qrels" / "test.tsv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["query-id", "corpus-id", "score"])
        w.writerows(qrels)
    with (a.out / "queries.jsonl").open("w", encoding="utf-8") as f:
        for line in (a.src / "queries.jsonl").open(encoding="utf-8"):
            if line.strip() and str(json.loads(line)["_id"]) in qids:
                f.write(line)
    print(f"{a.out}: {len(keep)} passages, {len(qids)} queries")


if __name__ == "__main__":
    main()
