"""`ragd` itself (the CLI's own commands, signal handling and exit codes) with the hashing fake as
embedder, installed through the CLI's provider hook, for subprocess tests that need no real
model: `python -m tests.faults.fake_model_ragd worker --data-dir D`.

FAULTS_EMBED_DELAY (seconds per embedding call, default 0) slows the fake down so that a sync
lasts long enough for a fault to land in its middle; FAULTS_LOCK_RENEW_S shortens the renewal
period of the instance's Redis lock (10 s in `ragd`), so that a short outage spans a renewal."""

from __future__ import annotations

import os

from rag_service import cli, queue
from rag_service.config import Settings
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.faults.support import SlowEmbedder


def providers(settings: Settings) -> Providers:
    embedder = SlowEmbedder(float(os.environ.get("FAULTS_EMBED_DELAY", "0")))
    return Providers(settings, embedder_factory=lambda model, pooling: embedder)


def runtime(settings: Settings) -> Runtime:
    return Runtime(settings, providers(settings))


if __name__ == "__main__":
    import workers.worker

    cli.make_providers = providers
    # `ragd worker` builds its runtime in workers/worker.py, past the CLI's provider hook.
    workers.worker.Runtime = runtime  # type: ignore[misc,assignment]
    if renew := os.environ.get("FAULTS_LOCK_RENEW_S"):
        queue.RENEW_EVERY_S = float(renew)
    cli.app(prog_name="ragd")
