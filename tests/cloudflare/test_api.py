"""The shared client: retries and backoff, Retry-After, the rate limiter, error messages, and
the API token never leaking — all over real HTTP against the fake."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from rag_service.errors import BackendError, RateLimited
from rag_service.providers.cloudflare import (
    CloudflareAPI,
    CloudflareAuthError,
    CloudflareNotFound,
    RateLimits,
    RetryPolicy,
    VectorizeClient,
    WorkersAIEmbedder,
    WorkersAIGenerator,
)
from rag_service.providers.cloudflare.limits import SlidingWindowLimiter
from tests.cloudflare.conftest import make_api
from tests.cloudflare.fake_api import FakeCloudflare
from tests.serving import free_port


async def test_retries_5xx_and_429_then_succeeds(fake: FakeCloudflare, api: CloudflareAPI) -> None:
    fake.faults.retry_after = None
    fake.script.extend([500, 429, 503])
    vectors = await WorkersAIEmbedder(api).embed_documents(["retried"])
    assert vectors.shape == (1, 768)
    assert [c.status for c in fake.calls("embeddings")] == [500, 429, 503, 200]


async def test_retry_after_is_honoured(fake: FakeCloudflare, api: CloudflareAPI) -> None:
    fake.faults.retry_after = "1"
    fake.script.append(429)
    await WorkersAIEmbedder(api).embed_documents(["patience"])
    first, second = fake.calls("embeddings")
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.95  # the backoff alone would be < 0.1 s


async def test_backoff_grows_with_full_jitter(fake: FakeCloudflare) -> None:
    policy = RetryPolicy(attempts=4, base=0.1, cap=10.0)
    assert all(0 <= policy.backoff(3) <= 0.8 for _ in range(200))
    assert max(policy.backoff(3) for _ in range(200)) > 0.4  # jitter spans the window
    api = make_api(fake, retry=policy)
    fake.faults.retry_after = None
    fake.script.extend([500, 500, 500, 500])
    with pytest.raises(BackendError, match=r"Cloudflare failed \(HTTP 500") as err:
        await WorkersAIEmbedder(api).embed_documents(["doomed"])
    assert err.value.transient
    assert len(fake.calls("embeddings")) == 4  # attempts, not more
    await api.aclose()


async def test_still_limited_after_retries_is_rate_limited(fake: FakeCloudflare) -> None:
    api = make_api(fake, retry=RetryPolicy(attempts=2, base=0.01))
    fake.faults.retry_after = "0"
    fake.script.extend([429, 429])
    with pytest.raises(RateLimited, match="still rate limited"):
        await WorkersAIEmbedder(api).embed_documents(["x"])
    await api.aclose()


async def test_timeouts_and_refused_connections_are_retried(fake: FakeCloudflare) -> None:
    api = make_api(
        fake, retry=RetryPolicy(attempts=3, base=0.01), timeout=httpx.Timeout(0.2, connect=1.0)
    )
    fake.faults.latency = 0.5
    with pytest.raises(BackendError, match="Cloudflare unreachable: ReadTimeout"):
        await WorkersAIEmbedder(api).embed_documents(["slow"])
    assert len(fake.requests) == 3
    await api.aclose()
    closed = CloudflareAPI(
        "acc", "tok", api_base=f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(2, 0.01)
    )
    with pytest.raises(BackendError, match="unreachable: ConnectError") as err:
        await WorkersAIEmbedder(closed).embed_documents(["nobody home"])
    assert err.value.transient


async def test_client_limiter_keeps_under_the_server_limit(fake: FakeCloudflare) -> None:
    fake.limits["embeddings"], fake.period = 5, 1.0
    api = make_api(fake, limits=RateLimits(embeddings=5, period=1.0, margin=0.05))
    embedder = WorkersAIEmbedder(api)
    started = time.monotonic()
    await asyncio.gather(*(embedder.embed_documents([f"t{i}"]) for i in range(15)))
    elapsed = time.monotonic() - started
    assert fake.stats["embeddings:200"] == 15 and fake.stats["embeddings:429"] == 0
    assert 2.0 <= elapsed < 6.0  # 5 per second: three windows (upper bound: not stuck)
    await api.aclose()


async def test_without_the_client_limiter_the_server_says_429(fake: FakeCloudflare) -> None:
    fake.limits["embeddings"], fake.period = 5, 1.0
    fake.faults.retry_after = None
    api = make_api(fake, limits=RateLimits(embeddings=1000, period=1.0))
    embedder = WorkersAIEmbedder(api)
    await asyncio.gather(*(embedder.embed_documents([f"t{i}"]) for i in range(10)))
    assert fake.stats["embeddings:429"] > 0  # so the previous test's zero means something
    await api.aclose()


async def test_sliding_window_limiter_holds_on_retry_after() -> None:
    limiter = SlidingWindowLimiter(3, 0.3)
    started = time.monotonic()
    for _ in range(7):
        await limiter.acquire()
    assert 0.6 <= time.monotonic() - started < 1.5  # two full windows, and not stuck
    limiter.hold(0.2)
    t0 = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - t0 >= 0.19


async def test_bad_token_is_named_and_not_retried(fake: FakeCloudflare) -> None:
    api = CloudflareAPI(fake.account, "wrong-token-abc", api_base=fake.base_url)
    with pytest.raises(CloudflareAuthError, match=r"rejected the API token.*Authentication"):
        await WorkersAIEmbedder(api).embed_documents(["x"])
    assert len(fake.requests) == 1
    await api.aclose()


async def test_4xx_messages_name_the_cause(fake: FakeCloudflare, api: CloudflareAPI) -> None:
    with pytest.raises(CloudflareNotFound, match="unknown Workers AI model"):
        await (
            WorkersAIGenerator(api, "@cf/nobody/nothing")
            .stream([{"role": "user", "content": "hi"}], max_tokens=4)
            .__anext__()
        )
    index = VectorizeClient(api, "dims")
    await index.create(4)
    with pytest.raises(BackendError, match=r"dimension mismatch.*expects 4 dimensions, got 3"):
        await index.upsert([{"id": "a", "values": [1.0, 0.0, 0.0]}])
    with pytest.raises(CloudflareNotFound, match=r"index 'nope'.*not found"):
        await VectorizeClient(api, "nope").info()
    other = CloudflareAPI("someone-else", fake.token, api_base=fake.base_url)
    with pytest.raises(CloudflareNotFound, match="object identifier is invalid"):
        await VectorizeClient(other, "dims").info()
    assert all(c.status < 500 for c in fake.requests)  # 4xx: none retried
    await other.aclose()


async def test_token_never_leaks(fake: FakeCloudflare, caplog: pytest.LogCaptureFixture) -> None:
    """Not in logs (httpx's included, at DEBUG), errors, reprs or recorded requests, even when
    a server echoes it back."""
    caplog.set_level(logging.DEBUG)
    secret = "leaky-secret-token-42"
    fake.echo_token_in_errors = True
    api = CloudflareAPI(fake.account, secret, api_base=fake.base_url, retry=RetryPolicy(3, 0.01))
    embedder, generator = WorkersAIEmbedder(api), WorkersAIGenerator(api)
    with pytest.raises(CloudflareAuthError) as err:
        await embedder.embed_documents(["x"])
    texts = [str(err.value), repr(err.value), repr(api), repr(embedder), repr(generator)]
    fake.token = secret  # now accepted: go through retries too
    fake.faults.retry_after = None
    fake.script.extend([500, 429])
    await embedder.embed_documents(["ok"])
    async for _ in generator.stream([{"role": "user", "content": "hi"}], max_tokens=3):
        pass
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.headers) + r.body.decode() for r in fake.requests]
    assert "Bearer ***" in str(err.value)  # the echoed token was redacted
    assert not [t for t in texts if secret in t]
    assert any("retry" in t for t in texts)  # the retries were logged
    await api.aclose()


async def test_one_shared_client_per_settings(fake: FakeCloudflare) -> None:
    from rag_service.config import Settings

    settings = Settings(
        cloudflare_account_id=fake.account,
        cloudflare_api_token=fake.token,
        cloudflare_api_base=fake.base_url,
    )
    shared = CloudflareAPI.for_settings(settings)
    assert CloudflareAPI.for_settings(settings.model_copy()) is shared
    other = settings.model_copy(update={"cloudflare_gateway_id": "gw"})
    assert CloudflareAPI.for_settings(other) is not shared
    with pytest.raises(BackendError, match="needs RAGD_CLOUDFLARE_ACCOUNT_ID"):
        CloudflareAPI.for_settings(Settings())
