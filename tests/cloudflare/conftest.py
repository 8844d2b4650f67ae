"""A fresh fake Cloudflare API per test, served over real HTTP, and a client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from rag_service.providers.cloudflare import CloudflareAPI, RetryPolicy
from tests.cloudflare.fake_api import FakeCloudflare
from tests.serving import serve

FAST_RETRY = RetryPolicy(attempts=6, base=0.01, cap=0.1)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCloudflare]:
    app = FakeCloudflare()
    async with serve(app) as url:
        app.base_url = url
        yield app


def make_api(fake: FakeCloudflare, **options: Any) -> CloudflareAPI:
    """A client of the fake with quick retries unless told otherwise."""
    options.setdefault("retry", FAST_RETRY)
    return CloudflareAPI(fake.account, fake.token, api_base=fake.base_url, **options)


@pytest.fixture
async def api(fake: FakeCloudflare) -> AsyncIterator[CloudflareAPI]:
    client = make_api(fake)
    yield client
    await client.aclose()
