"""In-process chat generation with a transformers causal LM (an HF id/folder or a GGUF file).

The model loads in the constructor (a GGUF takes ~45 s on 2 cores, most of it parsing the file);
build it off the event loop: `await asyncio.to_thread(LocalGenerator, name)`. With `cache_dir`
a GGUF is converted once to a safetensors folder there, and later starts load that (~5 s).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from rag_service.errors import BackendError, InvalidRequest
from rag_service.providers.local_models import resolve_generation_model, torch_threads
from rag_service.providers.protocols import ChatMessage, Usage

log = logging.getLogger(__name__)
REPETITION_PENALTY = 1.15
THREAD_NAME = "rag-local-generate"


class _StopFlag(StoppingCriteria):
    """Ends `generate` at the next token once the consumer has gone away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class LocalGenerator:
    """A `Generator` running a small chat model on CPU, one generation at a time."""

    def __init__(
        self,
        model: str = "smollm2",
        *,
        max_context: int = 8192,
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.model_id = model
        self.threads = max(1, threads or torch_threads())  # torch's setting is per thread
        source = resolve_generation_model(model)
        try:
            self.tokenizer, self.model = _load(source, cache_dir)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot load generation model {model!r}: {exc}") from exc
        self.model.eval()
        window = getattr(self.model.config, "max_position_embeddings", None) or max_context
        self.context_window: int = min(int(window), max_context)
        pad = self.tokenizer.pad_token_id
        self._pad_token_id = self.tokenizer.eos_token_id if pad is None else pad
        self._lock = asyncio.Lock()
        self._torch_lock = threading.Lock()

    async def warm(self) -> None:
        """One tiny generation, so the first real answer doesn't pay torch's warm-up."""
        async for _ in self.stream([{"role": "user", "content": "Hi"}], max_tokens=1):
            pass

    def _encode(self, messages: Sequence[ChatMessage], tensors: bool) -> Any:
        try:
            return self.tokenizer.apply_chat_template(
                [dict(m) for m in messages],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt" if tensors else None,
            )
        except Exception as exc:  # the chat template refused these messages (roles, order...)
            msg = f"cannot apply the chat template of {self.model_id!r}: {exc}"
            raise InvalidRequest(msg) from exc

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the prompt once the chat template (with the assistant cue) is applied."""
        return len(self._encode(messages, tensors=False)["input_ids"])

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        """Text pieces as they decode; greedy at temperature 0. Closing it stops the model."""
        if max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1")
        inputs = self._encode(messages, tensors=True)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + max_tokens > self.context_window:
            raise InvalidRequest(
                f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} exceeds the "
                f"{self.context_window}-token context of {self.model_id!r}"
            )
        # Greedy decoding of a small model repeats itself: a penalty on tokens already said.
        sampling: dict[str, Any] = {"do_sample": False, "repetition_penalty": REPETITION_PENALTY}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature}
        streamer: Any = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        stop = _StopFlag()
        result: dict[str, Any] = {"completion_tokens": 0}

        def run() -> None:
            with self._torch_lock, torch.inference_mode():
                torch.set_num_threads(self.threads)
                try:
                    out = self.model.generate(
                        **inputs,
                        max_new_tokens=max_tokens,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([stop]),
                        pad_token_id=self._pad_token_id,
                        **sampling,
                    )
                    result["completion_tokens"] = int(out.shape[1]) - prompt_tokens
                except Exception as exc:
                    result["error"] = exc
                    streamer.end()  # wake the reader

        async with self._lock:
            thread = threading.Thread(target=run, name=THREAD_NAME, daemon=True)
            thread.start()
            try:
                while (piece := await asyncio.to_thread(next, streamer, None)) is not None:
                    if piece:
                        yield piece
            finally:
                stop.event.set()
                await asyncio.to_thread(thread.join)
                if usage is not None:
                    usage.prompt_tokens = prompt_tokens
                    usage.completion_tokens = result["completion_tokens"]
        if "error" in result:
            raise BackendError(f"generation with {self.model_id!r} failed: {result['error']}")


def _load(source: str, cache_dir: Path | None) -> tuple[Any, Any]:
    """(tokenizer, model) from an HF id/folder, a GGUF file, or the GGUF's converted copy."""
    if not source.lower().endswith(".gguf"):
        return AutoTokenizer.from_pretrained(source), AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32
        )
    gguf = Path(source)
    if not gguf.is_file():
        raise BackendError(f"GGUF file {gguf} not found")
    converted = None
    if cache_dir is not None:
        stat = gguf.stat()
        converted = cache_dir / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if (converted / "config.json").is_file():
            return _load(str(converted), None)
    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    if converted is not None:
        _save_converted(tokenizer, model, converted)
    return tokenizer, model


def _save_converted(tokenizer: Any, model: Any, target: Path) -> None:
    """Save the dequantized weights as safetensors; a failure only costs the speed-up."""
    partial = target.with_name(target.name + ".partial")
    try:
        if any(type(m).__name__.startswith("Gguf") for m in model.modules()):
            return  # weights kept packed: nothing plain to save
        model.hf_quantizer = None  # the weights are plain float32 tensors by now
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    except Exception as exc:
        log.warning("could not cache the converted GGUF in %s: %s", target, exc)
        shutil.rmtree(partial, ignore_errors=True)
