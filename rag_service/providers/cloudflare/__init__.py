"""The Cloudflare backend: Workers AI (embeddings, generation, reranking) and Vectorize v2,
over REST, sharing one rate-limited, retrying client per process."""

from rag_service.providers.cloudflare.api import (
    CloudflareAPI,
    CloudflareAuthError,
    CloudflareNotFound,
    GatewayOptions,
    RetryPolicy,
)
from rag_service.providers.cloudflare.limits import RateLimits
from rag_service.providers.cloudflare.vectorize import VectorizeClient
from rag_service.providers.cloudflare.vectorize_index import VectorizeIndex, index_name
from rag_service.providers.cloudflare.workers_ai import (
    WorkersAIEmbedder,
    WorkersAIGenerator,
    WorkersAIReranker,
)
from rag_service.providers.usage import UsageMeter

__all__ = [
    "CloudflareAPI",
    "CloudflareAuthError",
    "CloudflareNotFound",
    "GatewayOptions",
    "RateLimits",
    "RetryPolicy",
    "UsageMeter",
    "VectorizeClient",
    "VectorizeIndex",
    "WorkersAIEmbedder",
    "WorkersAIGenerator",
    "WorkersAIReranker",
    "index_name",
]
