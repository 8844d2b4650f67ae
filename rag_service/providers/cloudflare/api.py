"""One Cloudflare REST client per event loop and settings: Bearer auth, the `{success, errors,
result}` envelope, retries with backoff, client-side rate limits, optional AI Gateway routing.

The API token lives only in the client's default headers: it is never logged, never part of a
repr, and redacted from every error message built from a response.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from rag_service.config import Settings
from rag_service.errors import BackendError, RateLimited, UpstreamError
from rag_service.providers.cloudflare.limits import RateLimits, SlidingWindowLimiter, Task

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
GATEWAY_BASE = "https://gateway.ai.cloudflare.com/v1"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
AUTH_CODES = frozenset({9106, 9109, 10000, 10001})


class CloudflareAuthError(BackendError):
    """The API token was refused (missing, wrong, or without the needed permission)."""


class CloudflareNotFound(BackendError):
    """A Cloudflare resource (index, model, account) does not exist."""

    status_code = 404


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2**attempt))."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap, self.base * 2.0**attempt))


@dataclass(frozen=True)
class GatewayOptions:
    """AI Gateway cache controls sent with every Workers AI call routed through a gateway."""

    cache_ttl: int | None = None  # seconds, 60 s .. 1 month
    skip_cache: bool = False

    def headers(self) -> dict[str, str]:
        out = {"cf-aig-cache-ttl": str(self.cache_ttl)} if self.cache_ttl else {}
        if self.skip_cache:
            out["cf-aig-skip-cache"] = "true"
        return out


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date), if any."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


@dataclass
class CloudflareAPI:
    """Calls Cloudflare's v4 REST API for one account. Share it: see `for_settings`."""

    account_id: str
    api_token: str = field(repr=False)
    api_base: str = DEFAULT_API_BASE
    gateway_id: str | None = None
    gateway_base: str = GATEWAY_BASE
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    limits: RateLimits = field(default_factory=RateLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(60.0, connect=10.0))
    client: httpx.AsyncClient | None = field(default=None, repr=False)
    _limiters: dict[Task, SlidingWindowLimiter] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.account_id or not self.api_token:
            raise BackendError(
                "the cloudflare backend needs RAGD_CLOUDFLARE_ACCOUNT_ID and "
                "RAGD_CLOUDFLARE_API_TOKEN"
            )
        self.api_base = self.api_base.rstrip("/")
        self.gateway_base = self.gateway_base.rstrip("/")
        self._owns_client = self.client is None
        self.http = self.client or httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._auth = {"Authorization": f"Bearer {self.api_token}"}

    @classmethod
    def for_settings(cls, settings: Settings) -> CloudflareAPI:
        """The process's client for these settings on the running event loop."""
        token = settings.cloudflare_api_token
        secret = token.get_secret_value() if token else ""
        key = (
            settings.cloudflare_api_base,
            settings.cloudflare_account_id or "",
            hashlib.sha256(secret.encode()).hexdigest(),
            settings.cloudflare_gateway_id,
        )
        per_loop = _SHARED.setdefault(asyncio.get_running_loop(), {})
        if key not in per_loop:
            per_loop[key] = cls(
                settings.cloudflare_account_id or "",
                secret,
                api_base=settings.cloudflare_api_base,
                gateway_id=settings.cloudflare_gateway_id,
            )
        return per_loop[key]

    async def aclose(self) -> None:
        if self._owns_client:
            await self.http.aclose()

    def account_url(self, path: str) -> str:
        return f"{self.api_base}/accounts/{self.account_id}/{path.lstrip('/')}"

    def ai_url(self, model: str) -> str:
        """`ai/run/{model}`, or the AI Gateway's Workers AI route when a gateway is set."""
        if self.gateway_id:
            return f"{self.gateway_base}/{self.account_id}/{self.gateway_id}/workers-ai/{model}"
        return self.account_url(f"ai/run/{model}")

    def ai_headers(self) -> dict[str, str]:
        return self.gateway.headers() if self.gateway_id else {}

    def limiter(self, task: Task) -> SlidingWindowLimiter:
        if task not in self._limiters:
            lim = self.limits
            self._limiters[task] = SlidingWindowLimiter(lim.limit(task), lim.period, lim.margin)
        return self._limiters[task]

    async def call(
        self,
        method: str,
        url: str,
        *,
        task: Task,
        what: str,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """One request, retried on 429/5xx/transport errors; returns the envelope's `result`."""
        request = self.http.build_request(
            method,
            url,
            json=json,
            content=content,
            headers={**self._auth, **(headers or {})},
            params=params,
        )
        resp = await self._send(request, task, what, stream=False)
        return self._result(resp, what)

    @asynccontextmanager
    async def stream(
        self, url: str, *, task: Task, what: str, json: Any, headers: Mapping[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """POST and yield the streaming response once its status is good (retried until then)."""
        request = self.http.build_request("POST", url, json=json, headers={**self._auth, **headers})
        resp = await self._send(request, task, what, stream=True)
        try:
            yield resp
        finally:
            await resp.aclose()

    async def _send(
        self, request: httpx.Request, task: Task, what: str, *, stream: bool
    ) -> httpx.Response:
        limiter = self.limiter(task)
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            await limiter.acquire()
            try:
                resp = await self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if last:
                    detail = self.redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
                    raise BackendError(
                        f"{what}: Cloudflare unreachable: {detail}", transient=True
                    ) from None
                delay = self.retry.backoff(attempt)
                log.warning("%s: %s; retry in %.2fs", what, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            if resp.status_code not in RETRY_STATUS or last:
                if resp.status_code >= 400:
                    await resp.aread()
                    await resp.aclose()
                    raise self._error(resp, what)
                return resp
            await resp.aread()
            await resp.aclose()
            wait = retry_after(resp)
            if resp.status_code == 429 and wait is not None:
                limiter.hold(wait)
            delay = max(wait or 0.0, self.retry.backoff(attempt))
            log.warning(
                "%s: HTTP %d; retry %d/%d in %.2fs",
                what,
                resp.status_code,
                attempt + 1,
                self.retry.attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, resp: httpx.Response, what: str) -> Any:
        try:
            body = resp.json()
        except ValueError:
            raise UpstreamError(
                f"{what}: Cloudflare answered HTTP {resp.status_code} with a body that is not "
                "JSON: " + self.redact(resp.text[:200]),
                summary=f"{what}: Cloudflare's answer was not JSON (HTTP {resp.status_code})",
            ) from None
        if not isinstance(body, dict) or "result" not in body:
            raise BackendError(f"{what}: Cloudflare's answer has no envelope `result`")
        if body.get("success") is False:
            raise self._error(resp, what)
        return body["result"]

    def _error(self, resp: httpx.Response, what: str) -> BackendError:
        """A typed error naming the cause, built from Cloudflare's `errors` list."""
        status = resp.status_code
        codes, detail = self._errors_of(resp)
        if status in (401, 403) or codes & AUTH_CODES:
            return CloudflareAuthError(
                f"{what}: Cloudflare rejected the API token (HTTP {status}: {detail}); check "
                "RAGD_CLOUDFLARE_API_TOKEN and its permissions (Workers AI, Vectorize)"
            )
        if status == 429:
            return RateLimited(f"{what}: still rate limited by Cloudflare after retries")
        if status == 404:
            return CloudflareNotFound(f"{what}: not found (HTTP 404: {detail})")
        if 5007 in codes or "no such model" in detail.lower():
            return CloudflareNotFound(f"{what}: unknown Workers AI model ({detail})")
        if status >= 500:
            return UpstreamError(
                f"{what}: Cloudflare failed (HTTP {status}: {detail})",
                summary=f"{what}: Cloudflare failed (HTTP {status})",
                transient=True,
            )
        return UpstreamError(
            f"{what}: Cloudflare refused the request (HTTP {status}: {detail})",
            summary=f"{what}: Cloudflare refused the request (HTTP {status})",
        )

    def _errors_of(self, resp: httpx.Response) -> tuple[set[int], str]:
        try:
            body = resp.json()
            errors = (body.get("errors") or []) if isinstance(body, dict) else []
        except ValueError:
            errors = []
        codes = {int(e["code"]) for e in errors if isinstance(e, dict) and "code" in e}
        messages = [
            f"{e.get('message', '')} (code {e.get('code')})" if "code" in e else str(e)
            for e in errors
            if isinstance(e, dict)
        ]
        detail = "; ".join(messages) or resp.text[:200] or resp.reason_phrase
        return codes, self.redact(detail)

    def redact(self, text: str) -> str:
        return text.replace(self.api_token, "***") if self.api_token else text


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], CloudflareAPI]]
_SHARED = weakref.WeakKeyDictionary()
