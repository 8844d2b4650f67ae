"""`ragd bench`: ingest throughput, `/search` latency and vector index latency on this machine."""

from typing import Literal

BenchKind = Literal["ingest", "query", "index"]
