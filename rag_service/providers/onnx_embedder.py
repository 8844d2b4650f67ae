"""LocalEmbedder with its encoder on ONNX Runtime: the same tokenizer, token-sorted batches,
pooling and normalisation; only the forward pass differs.

On first use the Hugging Face encoder is exported to ONNX (TorchScript exporter, opset 17,
dynamic batch and sequence axes), BERT-like graphs are fused by onnxruntime.transformers'
optimizer, and `int8` is that graph with dynamic per-channel QInt8 weights. Each variant is
kept in `<cache_dir>/<model>-<fingerprint>-<variant>/` (built in a temporary folder, checked
against the torch model, then renamed into place) and reused by every later process.

fp32 gives torch's vectors (|1 - cos| ~1e-7, float32 rounding); with MiniLM on 2 CPUs it
embedded single queries ~1.7x and batches ~1.1x faster than torch (bench/onnx). int8 moves
vectors by up to ~0.02 in cosine (vector nDCG@10 on NegConstraint 0.7104 against 0.7216) for
~2.1-2.3x faster batches and ~3.3x faster queries, so an int8 embedder reports its own
`model_id` (`<model>:onnx-int8`): an index built with torch or fp32 vectors refuses it.
Models of over 2 GB (ONNX's protobuf limit) are not supported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch

from rag_service.errors import BackendError
from rag_service.providers.local_embedder import LocalEmbedder
from rag_service.providers.local_models import resolve_embedding_model

log = logging.getLogger("ragd.providers")

Variant = Literal["fp32", "int8"]
INT8_SUFFIX = ":onnx-int8"  # int8 vectors differ from torch's: their own index identity
EXPORT_FORMAT = 1  # part of every cache key: bump it when the export itself changes
OPSET = 17
MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"
# Encoders whose attention and layer norms onnxruntime.transformers' "bert" optimizer fuses
# (tested: MiniLM; the BGE English models are BERTs too); others are exported unfused.
OPTIMIZED_TYPES = frozenset({"bert"})
_WEIGHT_FILES = ("config.json", "*.safetensors", "*.bin")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_PROBE = (
    "ONNX Runtime runs the exported encoder.",
    "A longer sentence, so that the batch pads the first one and the mask matters for pooling.",
)
_MAX_HIDDEN_DIFF = 1e-3  # fp32 graph vs torch, over real tokens
_MIN_INT8_COSINE = 0.9  # a sanity floor, not a quality gate (MiniLM int8: >= 0.98)


class OnnxEmbedder(LocalEmbedder):
    """An `Embedder` running a Hugging Face encoder exported to ONNX, on ONNX Runtime (CPU)."""

    def __init__(self, *args: Any, cache_dir: Path, int8: bool = False, **kwargs: Any) -> None:
        """LocalEmbedder's arguments (the device is the CPU), where the ONNX files are kept,
        and whether the weights are int8."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendError(
                "the onnx embedding runtimes need onnxruntime and onnx: "
                "pip install 'rag-service[local]' or set RAGD_EMBEDDING_RUNTIME=torch"
            ) from exc
        super().__init__(*args, **{**kwargs, "precision": "float32"})  # exported as float32
        if self.device.type != "cpu":
            raise BackendError(f"ONNX embeddings run on the CPU, not {self.device}")
        model = self.model_id
        self.variant: Variant = "int8" if int8 else "fp32"
        self.model_name = model
        if int8:
            self.model_id = model + INT8_SUFFIX
        self.cache_dir = Path(cache_dir)
        self.built: list[str] = []  # variants this instance exported (none: all from the cache)
        self._folder = _model_folder(resolve_embedding_model(model))
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model.rstrip("/").rsplit("/", 1)[-1])
        self._stem = f"{stem}-{_fingerprint(self._folder)}"
        self.onnx_path = self._ensure(self.variant)
        # LocalEmbedder runs a window's batches in `lanes` threads of one torch thread each, and
        # anything else on `threads`: concurrent ORT runs of one session do the same.
        self.ort_threads = self.threads if self.lanes == 1 else 1
        try:
            session = _session(self.onnx_path, self.ort_threads)
        except Exception as exc:  # a cached file that ORT cannot load: build it again, once
            log.warning("cached ONNX model %s unusable (%s): rebuilding it", self.onnx_path, exc)
            _discard(self.onnx_path.parent)
            self.onnx_path = self._ensure(self.variant)
            session = _session(self.onnx_path, self.ort_threads)
        # LocalEmbedder._embed calls `self.model(**batch).last_hidden_state`: the torch weights
        # are let go, and ORT answers that call.
        self.model = _OrtEncoder(session)

    def _ensure(self, variant: Variant) -> Path:
        """The cached model file of `variant`, built first when missing or damaged."""
        final = self.cache_dir / f"{self._stem}-{variant}"
        if _intact(final):
            return final / MODEL_FILE
        source = self._ensure("fp32") if variant == "int8" else None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with _build_lock(self.cache_dir / f".{final.name}.lock"):
                if _intact(final):  # another process built it while this one waited
                    return final / MODEL_FILE
                _discard(final)
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.cache_dir))
                try:
                    with _quiet_onnxruntime():
                        info = self._build(variant, tmp / MODEL_FILE, source)
                    _write_manifest(tmp, info)
                    _publish(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"exporting embedding model {self.model_name!r} to ONNX ({variant}) "
                f"in {self.cache_dir} failed: {exc}"
            ) from exc
        self.built.append(variant)
        log.info("exported %s (%s) to %s: %s", self.model_name, variant, final, info)
        return final / MODEL_FILE

    def _build(self, variant: Variant, out: Path, source: Path | None) -> dict[str, Any]:
        """Write `variant` to `out` and check it against the torch model on a probe batch."""
        encoder: Any = self.model
        probe = self._batch_tokenizer(list(_PROBE), padding=True, return_tensors="pt")
        inputs = {k: probe[k] for k in _INPUTS if k in probe}
        with torch.inference_mode():
            want = encoder(**inputs).last_hidden_state.numpy()
        info: dict[str, Any] = {"model": self.model_name, "variant": variant}
        if variant == "int8":
            assert source is not None
            info["quantized_from"] = source.parent.name
            _quantize(source, out)
        else:
            info["fused"] = _export_fp32(encoder, inputs, out)
        got = _OrtEncoder(_session(out, 1))(**inputs).last_hidden_state.numpy()
        mask = probe["attention_mask"].numpy().astype(bool)
        if variant == "fp32":
            info["max_hidden_diff"] = diff = float(np.abs(got - want)[mask].max())
            if diff > _MAX_HIDDEN_DIFF:
                raise BackendError(f"the ONNX export of {self.model_id!r} differs by {diff:.2g}")
        else:
            info["min_cosine"] = cos = min(_cosines(got, want, mask))
            if cos < _MIN_INT8_COSINE:
                raise BackendError(f"int8 {self.model_id!r} is too far from fp32: cos {cos:.3f}")
        return info


class _OrtEncoder:
    """Stands in for the HF model: `encoder(**batch).last_hidden_state`, on ONNX Runtime."""

    def __init__(self, session: Any) -> None:
        self.session = session
        declared = session.get_inputs()
        self.inputs = {i.name: np.int32 if "int32" in i.type else np.int64 for i in declared}

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        feed = {name: batch[name].numpy().astype(t, copy=False) for name, t in self.inputs.items()}
        try:
            hidden = self.session.run(None, feed)[0]
        except Exception as exc:  # ORT's own errors derive from Exception only
            raise RuntimeError(str(exc)) from exc
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Hidden(torch.nn.Module):
    """The encoder with positional inputs (the TorchScript exporter traces positions)."""

    def __init__(self, encoder: Any, names: list[str]) -> None:
        super().__init__()
        self.encoder, self.names = encoder, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.encoder(**dict(zip(self.names, inputs, strict=True)))[0]
        return hidden


def _export_fp32(encoder: Any, inputs: dict[str, torch.Tensor], out: Path) -> dict[str, int]:
    """Export (eager attention, which the optimizer can fuse) and optimise BERT-like encoders;
    others are exported as they are. Returns the fused operators."""
    config = encoder.config
    optimize = config.model_type in OPTIMIZED_TYPES
    if optimize:
        encoder.set_attn_implementation("eager")
    names = list(inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    raw = out.with_name("raw.onnx") if optimize else out
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on constants that do not apply here
        torch.onnx.export(
            _Hidden(encoder, names).eval(),
            tuple(inputs.values()),
            str(raw),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
        )
    if not optimize:
        return {}
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(raw),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
    )
    optimized.save_model_to_file(str(out))
    raw.unlink()
    stats = optimized.get_fused_operator_statistics()
    return {name: int(n) for name, n in stats.items() if n}


def _quantize(source: Path, out: Path) -> None:
    """Dynamic quantisation with per-channel QInt8 weights (per-tensor is too lossy for
    MiniLM: |1 - cos| up to 0.10 against 0.013)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # the fused contrib ops have no shape inference: their outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _cosines(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> list[float]:
    """Cosine of CLS and of mean-pooled vectors, per probe text."""
    weights = mask[..., None].astype(np.float64)
    pairs = [(got[:, 0], want[:, 0]), ((got * weights).sum(1), (want * weights).sum(1))]
    return [
        float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        for x, y in pairs
        for a, b in zip(x.astype(np.float64), y.astype(np.float64), strict=True)
    ]


def _model_folder(path: str) -> Path:
    """The folder of the model's config and weights: `path`, or its hub cache snapshot."""
    if Path(path).is_dir():
        return Path(path)
    from transformers.utils.hub import cached_file

    found = cached_file(path, "config.json")  # LocalEmbedder has just loaded it from there
    if found is None:
        raise BackendError(f"cannot find the files of embedding model {path!r}")
    return Path(found).parent


def _fingerprint(folder: Path) -> str:
    """Names, sizes and mtimes of the config and weight files: new weights, new export."""
    digest = hashlib.sha256(f"format {EXPORT_FORMAT} opset {OPSET}\n".encode())
    for file in sorted({f for pattern in _WEIGHT_FILES for f in folder.glob(pattern)}):
        st = file.stat()
        digest.update(f"{file.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, info: dict[str, Any]) -> None:
    import onnxruntime

    model = folder / MODEL_FILE
    info |= {
        "format": EXPORT_FORMAT,
        "bytes": model.stat().st_size,
        "sha256": _sha256(model),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }
    (folder / MANIFEST).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def _intact(folder: Path) -> bool:
    """A finished build whose model file is the one its manifest describes."""
    try:
        info = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        model = folder / MODEL_FILE
        if info.get("format") != EXPORT_FORMAT or model.stat().st_size != info.get("bytes"):
            return False
        return bool(_sha256(model) == info.get("sha256"))
    except (OSError, ValueError, AttributeError):
        return False


def _discard(folder: Path) -> None:
    """Move a damaged build out of the way first (a rename is atomic), then delete it."""
    trash = folder.with_name(f".trash-{folder.name}-{os.urandom(4).hex()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


class _OnnxruntimeInfo(logging.Filter):
    """onnxruntime's optimizer and quantiser log each fusion and tensor (hundreds of lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    root, drop = logging.getLogger(), _OnnxruntimeInfo()
    handlers = list(root.handlers)
    for where in (root, *handlers):
        where.addFilter(drop)
    try:
        yield
    finally:
        for where in (root, *handlers):
            where.removeFilter(drop)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished build into place; a complete one already there (a concurrent
    build, where there is no lock) is kept."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not _intact(final):
            raise


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One build of a variant at a time across processes (where flock exists)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builds are wasted work, still never mixed
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
