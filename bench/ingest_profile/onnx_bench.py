"""ONNX Runtime against ragd's torch embedder, offline, on the same model folder.

1. export: BertModel + mean pooling + L2 normalisation (what LocalEmbedder computes) to ONNX
   with dynamic batch and sequence axes (torch.onnx.export, TorchScript exporter), into --work;
   int8 copies by onnxruntime.quantization.quantize_dynamic (QInt8 weights; and reduce_range).
2. accuracy on the chunks of --beir-acc (400 passages): max |1 - cos| to torch per row, and the
   top-10 of each judged query over those chunks (same order? overlap?).
3. throughput on the chunks of --beir (interleaved rounds): torch as ragd runs it (1 and 2
   threads) against ORT fp32 and int8 (intra_op 1 and 2), all with ragd's tokenizer, sorted
   batches of 32 and max_length 256.
4. single-query latency (a batch of one, tokenizer included), interleaved.

Usage: python bench/ingest_profile/onnx_bench.py [--beir /tmp/negc200] [--beir-acc /tmp/negc400]
         [--rounds 3] [--work /tmp/ragd-onnx]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

SPEED = ("fp32", "fp32-opt", "int8")  # timed; int8-per-tensor: accuracy only


class Pooled(torch.nn.Module):
    def __init__(self, bert: Any) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def _export(model: Any, le: Any, path: Path) -> None:
    enc = le._batch_tokenizer(
        ["a short text", "another one, a bit longer"], padding=True, return_tensors="pt"
    )
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    dyn = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            Pooled(model).eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embeddings"],
            dynamic_axes={
                "input_ids": dyn,
                "attention_mask": dyn,
                "token_type_ids": dyn,
                "embeddings": {0: "batch"},
            },
        )


def export(le: Any, work: Path) -> dict[str, Path]:
    """fp32: ragd's loaded model (SDPA attention) exported as is. fp32-opt: the model loaded
    with eager attention, exported, then onnxruntime.transformers' BERT optimizer (fused
    Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu). int8: fp32-opt with
    dynamic quantisation, per-channel QInt8 weights; int8-per-tensor: the quantize_dynamic
    defaults (per-tensor), kept for its accuracy only."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    work.mkdir(parents=True, exist_ok=True)
    out = {
        "fp32": work / "minilm-pooled.onnx",
        "fp32-opt": work / "minilm-pooled-eager-opt.onnx",
        "int8": work / "minilm-pooled-eager-opt-int8-pc.onnx",
        "int8-per-tensor": work / "minilm-pooled-eager-opt-int8-pt.onnx",
    }
    if not out["fp32"].exists():
        _export(le.model, le, out["fp32"])
    if not out["fp32-opt"].exists():
        eager = AutoModel.from_pretrained(str(common.model_dir()), attn_implementation="eager")
        raw = work / "minilm-pooled-eager.onnx"
        _export(eager.eval(), le, raw)
        opt = optimize_model(str(raw), model_type="bert", num_heads=12, hidden_size=384)
        print("fused:", {k: v for k, v in opt.get_fused_operator_statistics().items() if v})
        opt.save_model_to_file(str(out["fp32-opt"]))
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    for name, per_channel in (("int8", True), ("int8-per-tensor", False)):
        if not out[name].exists():
            quantize_dynamic(
                str(out["fp32-opt"]),
                str(out[name]),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                extra_options=extra,
            )
    return out


class OrtEmbedder:
    def __init__(self, path: Path, tokenizer: Any, max_tokens: int, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def embed(self, texts: list[str], batch: int = 32) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        return self.embed_in(texts, order, batch)

    def embed_in(self, texts: list[str], order: list[int], batch: int) -> np.ndarray:
        """Batches of `batch` rows taken in `order`; rows put back in input order."""
        out = np.empty((len(texts), 384), dtype=np.float32)
        for s in range(0, len(order), batch):
            rows = order[s : s + batch]
            enc = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="np",
            )
            feed = {
                k: enc[k].astype(np.int64)
                for k in ("input_ids", "attention_mask", "token_type_ids")
            }
            out[rows] = self.session.run(None, feed)[0]
        return out


def rankings(docs: np.ndarray, qs: np.ndarray, k: int = 10) -> list[list[int]]:
    return [list(np.argsort(-(docs @ q), kind="stable")[:k]) for q in qs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", type=Path, default=Path("/tmp/negc200"))
    ap.add_argument("--beir-acc", type=Path, default=Path("/tmp/negc400"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-calls", type=int, default=30)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragd-onnx"))
    ap.add_argument("--out", default="onnx")
    a = ap.parse_args()

    import onnxruntime as ort

    from rag_service.config import Settings
    from rag_service.evaluation.beir import load_beir
    from rag_service.registry import Providers

    info = common.machine()
    info["onnxruntime"] = ort.__version__
    st = Settings()
    le: Any = Providers(st).local_embedder(st.embedding_model, st.embedding_pooling)
    t_default = le.threads
    paths = export(le, a.work)
    sizes = {k: round(p.stat().st_size / 2**20, 1) for k, p in paths.items()}
    print("exported:", sizes)
    tok = le._batch_tokenizer
    ort_models = {
        (k, t): OrtEmbedder(p, tok, le.max_tokens, t) for k, p in paths.items() for t in (1, 2)
    }

    def torch_embed(texts: list[str], threads: int) -> np.ndarray:
        le.threads = threads
        try:
            return le._embed(texts)
        finally:
            le.threads = t_default

    # 2. accuracy on the 400-passage chunks, with the judged queries
    acc_texts = common.chunk_texts(a.beir_acc, le)
    qtexts = list(load_beir(a.beir_acc).queries.values())
    ref = torch_embed(acc_texts, 2)
    qref = np.stack([torch_embed([le.query_instruction + q], 2)[0] for q in qtexts])
    rank_ref = rankings(ref, qref)
    accuracy: dict[str, Any] = {}
    for name in paths:
        m = ort_models[(name, 2)]
        emb = m.embed(acc_texts)
        qe = m.embed([le.query_instruction + q for q in qtexts], batch=1)
        rk = rankings(emb, qe)
        accuracy[name] = {
            "max_abs_1_minus_cos_docs": common.cosine_gap(ref, emb),
            "max_abs_1_minus_cos_queries": common.cosine_gap(qref, qe),
            "max_abs_score_diff": float(np.abs(ref @ qref.T - emb @ qe.T).max()),
            "queries": len(qtexts),
            "top10_identical_order": sum(x == y for x, y in zip(rank_ref, rk, strict=True)),
            "top1_same": sum(x[0] == y[0] for x, y in zip(rank_ref, rk, strict=True)),
            "mean_overlap_at_10": round(
                float(
                    np.mean([len(set(x) & set(y)) / 10 for x, y in zip(rank_ref, rk, strict=True)])
                ),
                3,
            ),
        }
    print("accuracy:", accuracy)

    # 3. throughput
    texts = common.chunk_texts(a.beir, le)
    docs = len(load_beir(a.beir).corpus)
    variants: dict[str, Any] = {
        f"torch t{t_default} (ragd default)": lambda: torch_embed(texts, t_default),
        "torch t2": lambda: torch_embed(texts, 2),
    }
    for name in SPEED:
        for t in (1, 2):
            variants[f"ort {name} t{t}"] = (lambda m: lambda: m.embed(texts))(ort_models[(name, t)])
    times = common.interleaved(variants, a.rounds)
    base = next(iter(variants))
    summary = common.summarise(times, base, docs)
    for name, row in summary.items():
        row["chunks/s"] = round(len(texts) / row["median_s"], 2)
        row["ratio_to_torch_t2"] = round(
            statistics.median([b / t for b, t in zip(times["torch t2"], times[name], strict=True)]),
            3,
        )
    print(common.table(summary))

    # 4. single-query latency (batch of one), interleaved call by call
    qs = [le.query_instruction + q for q in common.queries(a.beir_acc, 10)]
    lat_variants: dict[str, Any] = {
        f"torch t{t_default}": lambda q: torch_embed([q], t_default),
        "torch t2": lambda q: torch_embed([q], 2),
    }
    for name in SPEED:
        for t in (1, 2):
            lat_variants[f"ort {name} t{t}"] = (lambda m: lambda q: m.embed([q], batch=1))(
                ort_models[(name, t)]
            )
    for f in lat_variants.values():  # warm up
        f(qs[0])
    lat: dict[str, list[float]] = {k: [] for k in lat_variants}
    for i in range(a.latency_calls):
        for name, f in lat_variants.items():
            t0 = time.perf_counter()
            f(qs[i % len(qs)])
            lat[name].append((time.perf_counter() - t0) * 1000)
    lat_base = next(iter(lat))
    latency = {
        k: {
            "median_ms": round(statistics.median(v), 2),
            "p90_ms": round(sorted(v)[int(0.9 * len(v))], 2),
            "ratio_to_" + lat_base: round(
                statistics.median(lat[lat_base]) / statistics.median(v), 3
            ),
        }
        for k, v in lat.items()
    }
    print(common.table(latency))
    info["loadavg_end"] = os.getloadavg()
    path = common.save(
        a.out,
        {
            "machine": info,
            "model_files_mib": sizes,
            "passages": docs,
            "chunks": len(texts),
            "rounds": a.rounds,
            "accuracy_on": str(a.beir_acc),
            "accuracy_chunks": len(acc_texts),
            "accuracy": accuracy,
            "throughput": summary,
            "seconds": times,
            "cpu_seconds": common.CPU,
            "latency": latency,
            "latency_raw_ms": lat,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
