"""ragd against txtai and Haystack on one BEIR folder with one local model (all-MiniLM-L6-v2).

Each peer runs in its own process (ragd in this venv, txtai and Haystack each in a pinned venv
under ~/.cache/ragd-peers/ or $RAGD_PEERS_DIR, made on first use): it indexes every passage and
retrieves the top 100 of each judged query in vector, keyword and hybrid mode. This driver scores
every run with ragd's metric code, interleaves the peers over rounds, and prints a table.

Usage: .venv/bin/python bench/peers.py [--beir DIR] [--rounds 2] [--peers ragd,txtai,haystack]
         [--limit N] [--threads N] [--check-eval] [--out DIR]
See bench/peers/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench" / "peers"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from peerlib import MODES, load_qrels, offline  # noqa: E402

from rag_service.evaluation.metrics import mean_scores  # noqa: E402

TORCH = "torch==2.13.0"  # a CPU wheel on this disk; installed first, then held by a constraint


@dataclass(frozen=True)
class Peer:
    name: str
    version: str  # the pinned version of the library (names its venv)
    requirements: tuple[str, ...]  # installed after torch
    runner: str

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


PEERS = {
    p.name: p
    for p in (
        Peer("ragd", "repo", (), "run_ragd.py"),
        Peer("txtai", "9.14.0", ("txtai==9.14.0", "faiss-cpu==1.15.1"), "run_txtai.py"),
        Peer(
            "haystack",
            "3.4.1",
            # Haystack 3 moved its Sentence Transformers embedders to an integration package
            (
                "haystack-ai==3.4.1",
                "sentence-transformers-haystack==2.0.0",
                "sentence-transformers==6.3.0",
            ),
            "run_haystack.py",
        ),
    )
}
BASE = "txtai"  # passages/s ratios are against this peer's, round by round


def say(msg: str) -> None:
    print(msg, flush=True)


# --- venvs -----------------------------------------------------------------------------------


def peers_dir() -> Path:
    return Path(os.environ.get("RAGD_PEERS_DIR") or Path.home() / ".cache" / "ragd-peers")


def _pip(venv: Path, *args: str) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", *args]
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def _freeze(venv: Path) -> list[str]:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def ensure_venv(peer: Peer) -> Path:
    """The peer's python: its venv, made once (torch's CPU wheel first, then the peer pinned,
    torch held by a constraint so no CUDA build is ever pulled); ragd: this interpreter. A venv
    whose recorded requirements differ from the peer's gets them installed again."""
    if peer.name == "ragd":
        return Path(sys.executable)
    venv = peers_dir() / peer.label
    done = venv / "ragd-peers-installed.txt"
    wanted = " ".join(peer.requirements)
    if done.is_file() and done.read_text().splitlines()[0] == wanted:
        return venv / "bin" / "python"
    say(f"[setup] {peer.label}: installing into {venv} (takes minutes, once)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    _pip(venv, TORCH)
    torch = next(line for line in _freeze(venv) if line.lower().startswith("torch=="))
    if "+cpu" not in torch:
        raise SystemExit(f"{venv}: got {torch}, not the CPU wheel: remove the venv, check pip")
    constraints = venv / "constraints.txt"
    constraints.write_text(torch + "\n")
    _pip(venv, "-c", str(constraints), *peer.requirements)
    frozen = _freeze(venv)
    cuda = [p for p in frozen if p.lower().startswith(("nvidia", "triton", "cuda"))]
    if cuda:
        raise SystemExit(f"{venv}: CUDA packages were installed ({', '.join(cuda)}): remove it")
    done.write_text("\n".join([wanted, *frozen]) + "\n")
    say(f"[setup] {peer.label}: ready")
    return venv / "bin" / "python"


# --- the BEIR folder -------------------------------------------------------------------------


def subset(beir: Path, limit: int, dest: Path) -> Path:
    """The first `limit` passages and the judged queries all of whose relevant passages are
    among them, as a BEIR folder in `dest`."""
    lines = [x for x in (beir / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if x]
    kept = lines[:limit]
    ids = {str(json.loads(x)["_id"]) for x in kept}
    qrels = load_qrels(beir / "qrels" / "test.tsv")
    judged = {
        q: docs
        for q, docs in qrels.items()
        if any(r > 0 for r in docs.values()) and all(d in ids for d, r in docs.items() if r > 0)
    }
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    (dest / "corpus.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    shutil.copy(beir / "queries.jsonl", dest / "queries.jsonl")
    rows = ["query-id\tcorpus-id\tscore"]
    rows += [f"{q}\t{d}\t{r}" for q, docs in judged.items() for d, r in docs.items() if d in ids]
    (dest / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return dest


# --- running and scoring ---------------------------------------------------------------------


def run_peer(
    peer: Peer, python: Path, beir: Path, model: Path, out: Path, threads: int | None
) -> dict[str, Any]:
    """One runner process; its report, with the load average before and after and its wall."""
    cmd = [str(python), str(HERE / peer.runner), "--beir", str(beir), "--model", str(model)]
    cmd += ["--out", str(out)] + (["--threads", str(threads)] if threads else [])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" or threads}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    report["process_s"] = round(time.perf_counter() - t0, 2)
    report["loadavg_before"] = [round(x, 2) for x in load_before]
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def rankings(run: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """Passage ids best first: by score, ties in the runner's order (stable sort)."""
    return {q: sorted(docs, key=lambda d: -docs[d]) for q, docs in run.items()}


def score(report: Mapping[str, Any], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """ragd's metrics (rag_service.evaluation.metrics) of every mode a runner wrote."""
    return {mode: mean_scores(rankings(run), qrels) for mode, run in report["runs"].items()}


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)] if s else float("nan")


def summarise(rounds: list[dict[str, dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    """Per peer: medians over rounds; passages/s ratio to BASE from the same round."""
    out: dict[str, Any] = {}
    for name in names:
        reps = [r[name] for r in rounds]
        ingest = [r["ingest_s"] for r in reps]
        rates = [r["passages"] / r["ingest_s"] for r in reps]
        ratios = [
            (r[name]["passages"] / r[name]["ingest_s"])
            / (r[BASE]["passages"] / r[BASE]["ingest_s"])
            for r in rounds
            if BASE in r
        ]
        lat = [ms for r in reps for ms in r["hybrid_ms"]]
        out[name] = {
            "ingest_s": round(statistics.median(ingest), 2),
            "passages_per_s": round(statistics.median(rates), 2),
            f"ratio_to_{BASE}": round(statistics.median(ratios), 3) if ratios else None,
            "ratios": [round(x, 3) for x in ratios],
            "model_load_s": _median([r["model_load_s"] for r in reps]),
            "ndcg@10": {m: round(reps[0]["scores"][m]["ndcg@10"], 4) for m in reps[0]["scores"]},
            "hybrid_p50_ms": round(percentile(lat, 50), 1),
            "hybrid_p95_ms": round(percentile(lat, 95), 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in reps),
            "torch_threads": reps[0]["torch_threads"],
            "chunks": reps[0]["chunks"],
            "passages": reps[0]["passages"],
            "queries": reps[0]["queries"],
            "ndcg_same_every_round": all(r["scores"] == reps[0]["scores"] for r in reps),
            **({k: v for k, v in reps[0]["extra"].items() if k.endswith("_per_query")}),
        }
    return out


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 2) if vals else None


def table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The markdown table."""
    head = (
        f"| peer | ingest s | of which model load s | passages/s | ratio to {BASE} "
        "| nDCG@10 vector | keyword | hybrid | hybrid p50 ms | p95 ms | peak RSS MB "
        "| torch threads |"
    )
    lines = [head, "|---|" + "---:|" * 11]
    for name, s in summary.items():
        nd = s["ndcg@10"]
        ratio = s[f"ratio_to_{BASE}"]
        cells = [
            name,
            f"{s['ingest_s']:.1f}",
            "-" if s["model_load_s"] is None else f"{s['model_load_s']:.1f}",
            f"{s['passages_per_s']:.2f}",
            "-" if ratio is None else f"{ratio:.2f}",
            *(f"{nd[m]:.4f}" for m in MODES),
            f"{s['hybrid_p50_ms']:.1f}",
            f"{s['hybrid_p95_ms']:.1f}",
            f"{s['peak_rss_mb']:.0f}",
            str(s["torch_threads"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    extra = [f"{n} {m}: {v:.4f}" for n, s in summary.items() for m, v in s["ndcg@10"].items()]
    extra = [e for e in extra if not any(e.split(" ")[1] == f"{m}:" for m in MODES)]
    if extra:
        lines += ["", "Other modes, nDCG@10: " + "; ".join(extra) + "."]
    searches = summary.get("ragd", {}).get("hybrid_searches_per_query")
    if searches:
        lines += ["", f"ragd hybrid: {searches} searches per query for 100 distinct passages."]
    return "\n".join(lines)


# --- `ragd eval` cross-check -----------------------------------------------------------------

# ragd runner mode -> `ragd eval` mode holding the same retrieval (hybrid: ragd's default fusion)
EVAL_MODES = {
    "vector": "vector",
    "keyword": "keyword",
    "hybrid": "hybrid-max",
    "hybrid-rrf": "hybrid",
}


def check_eval(beir: Path, ours: Mapping[str, Mapping[str, float]], tmp: Path) -> dict[str, Any]:
    """Runs `ragd eval --keyword-match-mode or` on the same folder and compares nDCG@10."""
    path = tmp / "ragd-eval.json"
    ragd = Path(sys.executable).parent / "ragd"
    cmd = [
        str(ragd),
        "eval",
        "--beir",
        str(beir),
        "--keyword-match-mode",
        "or",
        "--json",
        str(path),
    ]
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    theirs = json.loads(path.read_text(encoding="utf-8"))
    rows = {
        mode: {"driver": ours[mode]["ndcg@10"], "ragd_eval": theirs[em]["ndcg@10"]}
        for mode, em in EVAL_MODES.items()
        if mode in ours and em in theirs
    }
    same = all(abs(r["driver"] - r["ragd_eval"]) < 5e-5 for r in rows.values())
    return {"ndcg@10": rows, "equal_within_5e-5": same, "eval_meta": theirs.get("meta")}


def check_md(check: Mapping[str, Any]) -> str:
    rows = ", ".join(
        f"{m} {r['driver']:.4f} / {r['ragd_eval']:.4f}" for m, r in check["ndcg@10"].items()
    )
    same = "equal" if check["equal_within_5e-5"] else "NOT equal"
    return f"ragd nDCG@10, this driver / `ragd eval` on the same folder: {rows} ({same})"


# --- main ------------------------------------------------------------------------------------


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_beir = ROOT.parent / "shared" / "data" / "beir" / "negconstraint"
    ap.add_argument("--beir", type=Path, default=default_beir, help="a BEIR folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peers", default="ragd,txtai,haystack")
    ap.add_argument("--limit", type=int, default=None, help="only the first N passages")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every peer")
    ap.add_argument("--check-eval", action="store_true", help="also run `ragd eval`, compare")
    ap.add_argument("--setup-only", action="store_true", help="make the venvs, then stop")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the results")
    args = ap.parse_args()
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown or not args.peers:
        ap.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    if args.rounds < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--rounds and --limit must be at least 1")
    return args


def model_folder() -> Path:
    from rag_service.providers.local_models import minilm_path

    return minilm_path().resolve()


def run_rounds(
    args: argparse.Namespace, pythons: dict[str, Path], beir: Path, tmp: Path
) -> list[dict[str, dict[str, Any]]]:
    """Every peer once per round, the order rotated by one each round; scored."""
    qrels = load_qrels(beir / "qrels" / "test.tsv")
    model = model_folder()
    names: list[str] = args.peers
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        results: dict[str, dict[str, Any]] = {}
        for name in order:
            say(f"[round {r + 1}/{args.rounds}] {name} (load {os.getloadavg()[0]:.2f})")
            out = tmp / f"{name}-round{r + 1}.json"
            rep = run_peer(PEERS[name], pythons[name], beir, model, out, args.threads)
            rep["scores"] = score(rep, qrels)
            rep["round"], rep["position"] = r + 1, order.index(name) + 1
            nd = ", ".join(f"{m} {s['ndcg@10']:.4f}" for m, s in rep["scores"].items())
            say(
                f"  {name}: {rep['passages']} passages in {rep['ingest_s']:.1f} s "
                f"({rep['passages'] / rep['ingest_s']:.2f}/s), nDCG@10 {nd}, "
                f"load {rep['loadavg_before'][0]:.2f} -> {rep['loadavg_after'][0]:.2f}"
            )
            results[name] = rep
        rounds.append(results)
    return rounds


def machine() -> dict[str, Any]:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def rounds_md(rounds: list[dict[str, dict[str, Any]]]) -> str:
    """One line per run: order, ingest, load average before and after."""
    lines = ["| round | position | peer | ingest s | passages/s | load 1 min before -> after |"]
    lines.append("|---:|---:|---|---:|---:|---|")
    for rnd in rounds:
        for name, r in sorted(rnd.items(), key=lambda kv: kv[1]["position"]):
            load = f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}"
            rate = r["passages"] / r["ingest_s"]
            lines.append(
                f"| {r['round']} | {r['position']} | {name} | {r['ingest_s']:.1f} | {rate:.2f} "
                f"| {load} |"
            )
    return "\n".join(lines)


def markdown(
    args: argparse.Namespace, summary: Mapping[str, Any], rounds: list[Any], check: Any, when: str
) -> str:
    first = summary[args.peers[0]]
    head = (
        f"{args.beir.name}: {first['passages']} passages, {first['queries']} judged queries, "
        f"top 100, {args.rounds} round(s), torch threads {args.threads or 'each default'}, {when}"
    )
    parts = [head, table(summary), rounds_md(rounds)]
    if check:
        parts.append(check_md(check))
    return "\n\n".join(parts)


def save(args: argparse.Namespace, payload: dict[str, Any], md: str) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"peers-{datetime.date.today().isoformat()}"
    if args.limit:
        stem += f"-limit{args.limit}"
    path: Path = args.out / f"{stem}.json"
    if path.exists():  # keep the earlier run of the day
        path = path.with_name(f"{stem}-{datetime.datetime.now():%H%M}.json")
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(md + "\n", encoding="utf-8")
    return path


def main() -> None:
    args = parse()
    offline()
    pythons = {name: ensure_venv(PEERS[name]) for name in args.peers}
    if args.setup_only:
        return
    when = datetime.datetime.now().isoformat(timespec="seconds")
    info = machine()
    with tempfile.TemporaryDirectory(prefix="ragd-peers-") as t:
        tmp = Path(t)
        beir = subset(args.beir, args.limit, tmp / "beir") if args.limit else args.beir.resolve()
        rounds = run_rounds(args, pythons, beir, tmp)
        summary = summarise(rounds, args.peers)
        check = None
        if args.check_eval and "ragd" in args.peers:
            check = check_eval(beir, rounds[0]["ragd"]["scores"], tmp)
    md = markdown(args, summary, rounds, check, when)
    for rnd in rounds:
        for rep in rnd.values():
            rep.pop("runs")  # the scores are kept; the raw runs are large
    payload = {
        "dataset": str(args.beir),
        "limit": args.limit,
        "rounds_n": args.rounds,
        "threads": args.threads,
        "started": when,
        "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "peers": {
            n: {"version": PEERS[n].version, "requirements": [TORCH, *PEERS[n].requirements]}
            for n in args.peers
        },
        "summary": summary,
        "ragd_eval_check": check,
        "rounds": rounds,
    }
    path = save(args, payload, md)
    say("\n" + md + f"\n\nwrote {path} and {path.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
