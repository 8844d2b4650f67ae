"""Workers AI usage: tokens in/out per call and an estimated neuron and dollar cost.

Attach a `UsageMeter` to a piece of work (a query, a sync job) with `with meter.attach():`;
every Workers AI call made inside it (tasks it starts included: they copy the context) adds to
that meter and logs one line (model, tokens, cost; no secrets).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

USD_PER_1000_NEURONS = 0.011
# Published prices, USD per 1M tokens (input, output); shared/cloudflare/README.md.
PRICES: dict[str, tuple[float, float]] = {
    "@cf/meta/llama-3.1-8b-instruct": (0.282, 0.827),
    "@cf/meta/llama-3.1-8b-instruct-fp8-fast": (0.045, 0.384),
    "@cf/meta/llama-3.3-70b-instruct-fp8-fast": (0.293, 2.253),
    "@cf/baai/bge-base-en-v1.5": (0.067, 0.0),
    "@cf/baai/bge-large-en-v1.5": (0.204, 0.0),
}


def estimate_usd(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """Dollar cost from the published per-token prices; None for an unpriced model."""
    price = PRICES.get(model)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def usd_to_neurons(usd: float) -> float:
    return usd / USD_PER_1000_NEURONS * 1000


@dataclass
class _ModelUsage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    unpriced_calls: int = 0


class UsageMeter:
    """Accumulates calls, tokens and estimated cost per model (thread- and task-safe)."""

    def __init__(self) -> None:
        self._models: dict[str, _ModelUsage] = {}
        self._lock = threading.Lock()

    def add(self, model: str, input_tokens: int, output_tokens: int, usd: float | None) -> None:
        with self._lock:
            m = self._models.setdefault(model, _ModelUsage())
            m.calls += 1
            m.input_tokens += input_tokens
            m.output_tokens += output_tokens
            if usd is None:
                m.unpriced_calls += 1
            else:
                m.usd += usd

    @contextmanager
    def attach(self) -> Iterator[UsageMeter]:
        """Count the Workers AI calls made in this context (and tasks started from it)."""
        token = _ATTACHED.set((*_ATTACHED.get(), self))
        try:
            yield self
        finally:
            _ATTACHED.reset(token)

    def snapshot(self) -> dict[str, Any]:
        """`{calls, input_tokens, output_tokens, neurons, usd, unpriced_calls, models: {...}}`."""
        with self._lock:
            models = {
                name: {
                    "calls": m.calls,
                    "input_tokens": m.input_tokens,
                    "output_tokens": m.output_tokens,
                    "neurons": round(usd_to_neurons(m.usd), 3),
                    "usd": round(m.usd, 12),
                    "unpriced_calls": m.unpriced_calls,
                }
                for name, m in sorted(self._models.items())
            }
        totals: dict[str, Any] = {
            key: sum(m[key] for m in models.values())
            for key in ("calls", "input_tokens", "output_tokens", "unpriced_calls")
        }
        usd = sum(m["usd"] for m in models.values())
        totals.update(usd=round(usd, 12), neurons=round(usd_to_neurons(usd), 3), models=models)
        return totals


_ATTACHED: contextvars.ContextVar[tuple[UsageMeter, ...]] = contextvars.ContextVar(
    "ragd_usage_meters", default=()
)


def record_call(model: str, input_tokens: int, output_tokens: int = 0) -> None:
    """Add one call to every attached meter, and log it."""
    usd = estimate_usd(model, input_tokens, output_tokens)
    for meter in _ATTACHED.get():
        meter.add(model, input_tokens, output_tokens, usd)
    cost = "unpriced" if usd is None else f"~{usd_to_neurons(usd):.2f} neurons (${usd:.6f})"
    log.info("workers-ai %s: %d tokens in, %d out, %s", model, input_tokens, output_tokens, cost)
