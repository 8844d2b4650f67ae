"""What a benchmark ran on (kept in `rag_service.benchmarks.machine`, for `ragd bench`)."""

from rag_service.benchmarks.machine import RESULTS, describe_machine, save_result

__all__ = ["RESULTS", "describe_machine", "save_result"]
