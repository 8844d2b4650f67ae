"""A fake of Cloudflare's v4 REST API (Workers AI run, AI Gateway, Vectorize v2) as a plain ASGI
app, served over real HTTP by tests/serving.py.

It checks what Cloudflare checks (Bearer token, account, documented shapes and limits) and
answers in Cloudflare's envelope; it can inject 429s (with Retry-After), 500s and latency at
set rates, enforces per-task requests-per-period limits, and records every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from rag_service.api.errors import envelope, error_body
from tests.cloudflare.fake_vectorize import FakeError, FakeVectorize
from tests.serving import read_body

EMBEDDING_DIMENSIONS = {
    "@cf/baai/bge-small-en-v1.5": 384,
    "@cf/baai/bge-base-en-v1.5": 768,
    "@cf/baai/bge-large-en-v1.5": 1024,
    "@cf/baai/bge-m3": 1024,
}
RERANKERS = {"@cf/baai/bge-reranker-base"}
LLM_PREFIXES = ("@cf/meta/", "@cf/openai/", "@cf/mistral/", "@cf/qwen/", "@cf/google/")
MAX_EMBED_TEXTS = 100
DEFAULT_LIMITS = {
    "text_generation": 300,
    "embeddings": 3000,
    "embeddings_large": 1500,
    "other": 720,
    "vectorize": 720,
}
WORD = re.compile(r"\w+")
ROUTES = [
    (re.compile(r"^/accounts/(?P<acc>[^/]+)/ai/run/(?P<model>.+)$"), "ai"),
    (re.compile(r"^/v1/(?P<acc>[^/]+)/(?P<gw>[^/]+)/workers-ai/(?P<model>.+)$"), "ai"),
    (re.compile(r"^/accounts/(?P<acc>[^/]+)/vectorize/v2/indexes$"), "vectorize"),
    (
        re.compile(
            r"^/accounts/(?P<acc>[^/]+)/vectorize/v2/indexes/(?P<name>[^/]+)"
            r"(?:/(?P<op>info|upsert|insert|query|get_by_ids|delete_by_ids|list"
            r"|metadata_index/create|metadata_index/list))?$"
        ),
        "vectorize",
    ),
]
WRITES = {"upsert", "insert", "delete_by_ids"}


@dataclass
class Faults:
    """Injected failures: probabilities per request, the Retry-After sent, added latency."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    retry_after: str | None = "1"
    latency: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names, Authorization left out
    body: bytes
    status: int = 0
    task: str = ""
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)

    def ndjson(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class FakeCloudflare:
    token: str = "fake-cf-token-0123456789"
    account: str = "fakeaccount0001"
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    period: float = 60.0
    faults: Faults = field(default_factory=Faults)
    stream_delay: float = 0.0
    echo_token_in_errors: bool = False  # to prove the client redacts what a server echoes
    seed: int = 0
    base_url: str = ""  # set while served

    def __post_init__(self) -> None:
        self.vectorize = FakeVectorize()
        self.requests: list[Recorded] = []
        self.stats: Counter[str] = Counter()  # "task:status" -> count
        self.poolings: list[str | None] = []
        self.script: deque[int] = deque()  # statuses to answer the next requests with
        self._rng = random.Random(self.seed)
        self._windows: dict[str, deque[float]] = {}

    def inject(self, faults: Faults, seed: int) -> None:
        """Fail requests from now on as `faults` says, drawing from a fresh `seed`."""
        self.faults, self._rng = faults, random.Random(seed)

    @property
    def mutation_delay(self) -> float:
        return self.vectorize.mutation_delay

    @mutation_delay.setter
    def mutation_delay(self, seconds: float) -> None:
        self.vectorize.mutation_delay = seconds

    def calls(self, task: str | None = None, path_part: str = "") -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (task is None or r.task == task) and path_part in r.path and r.status
        ]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        rec = Recorded(
            scope["method"],
            scope["path"],
            dict(parse_qsl(scope["query_string"].decode())),
            {k: v for k, v in headers.items() if k != "authorization"},
            body,
        )
        self.requests.append(rec)
        extra: dict[str, str] = {}
        try:
            result = await self._dispatch(rec, headers.get("authorization", ""), extra)
        except FakeError as err:
            rec.status = err.status
            await _send_json(send, err.status, error_body(err.code, err.message), extra)
        else:
            if isinstance(result, _Stream):
                rec.status = 200
                await result.send(send, self.stream_delay)
            else:
                rec.status = 200
                await _send_json(send, 200, envelope(result), extra)
        self.stats[f"{rec.task}:{rec.status}"] += 1

    async def _dispatch(self, rec: Recorded, auth: str, extra: dict[str, str]) -> Any:
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        for pattern, kind in ROUTES:  # noqa: B007 (the matching route's kind is used below)
            if m := pattern.match(rec.path):
                break
        else:
            raise FakeError(404, 7000, f"No route for that URI: {rec.path}")
        params = m.groupdict()
        rec.task = self._task(kind, params.get("model"))
        if auth != f"Bearer {self.token}":
            shown = f" ({auth})" if self.echo_token_in_errors else ""
            raise FakeError(401, 10000, f"Authentication error{shown}")
        if params["acc"] != self.account:
            raise FakeError(
                404,
                7003,
                "Could not route to /accounts, perhaps your object identifier is invalid?",
            )
        self._rate_limit(rec.task, extra)
        op = params.get("op")
        fault = self._fault()
        if fault == 429:
            if self.faults.retry_after is not None:
                extra["Retry-After"] = self.faults.retry_after
            raise FakeError(429, 971, "Please wait and consider throttling your request speed")
        if fault is not None and fault != 500:
            raise FakeError(fault, 7000 + fault, f"scripted HTTP {fault}")
        # Half the failed writes are applied first and only the answer is lost: the client
        # must retry them idempotently.
        fail_after = fault == 500 and op in WRITES and self._rng.random() < 0.5
        if fault == 500 and not fail_after:
            raise FakeError(500, 7500, "Internal server error")
        if kind == "vectorize":
            result = self.vectorize.handle(rec.method, params.get("name"), op, rec.body, rec.query)
        else:
            result = self._run(params["model"], rec)
        if fail_after:
            raise FakeError(500, 7500, "Internal server error")
        return result

    def _fault(self) -> int | None:
        """The status to fail this request with: the script's next one, else drawn at the
        configured rates."""
        if self.script:
            return self.script.popleft()
        roll = self._rng.random()
        if roll < self.faults.rate_429:
            return 429
        return 500 if roll < self.faults.rate_429 + self.faults.rate_500 else None

    def _task(self, kind: str, model: str | None) -> str:
        if kind == "vectorize" or model is None:
            return "vectorize"
        if model in EMBEDDING_DIMENSIONS:
            return "embeddings_large" if "bge-large" in model else "embeddings"
        return "text_generation" if model.startswith(LLM_PREFIXES) else "other"

    def _rate_limit(self, task: str, extra: dict[str, str]) -> None:
        """A sliding window: at most limits[task] accepted requests in any `period` seconds."""
        window = self._windows.setdefault(task, deque())
        now = time.monotonic()
        while window and window[0] <= now - self.period:
            window.popleft()
        if len(window) >= self.limits[task]:
            extra["Retry-After"] = str(max(1, math.ceil(window[0] + self.period - now)))
            raise FakeError(429, 3040, "Capacity temporarily exceeded, please try again later")
        window.append(now)

    def _run(self, model: str, rec: Recorded) -> Any:
        if rec.method != "POST":
            raise FakeError(405, 10405, "ai/run takes POST")
        body = json.loads(rec.body or b"{}")
        if model in EMBEDDING_DIMENSIONS:
            return self._embed(model, body)
        if model in RERANKERS:
            return _rerank(body)
        if model.startswith(LLM_PREFIXES):
            return _generate(body)
        raise FakeError(400, 5007, f"No such model {model} or task")

    def _embed(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        text, pooling = body.get("text"), body.get("pooling")
        self.poolings.append(pooling)
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise FakeError(400, 5006, "Type mismatch of '/text', 'string' not in 'array'")
        if len(texts) > MAX_EMBED_TEXTS:
            raise FakeError(400, 5006, f"'/text': array longer than {MAX_EMBED_TEXTS} items")
        if pooling not in (None, "mean", "cls"):
            raise FakeError(400, 5006, "'/pooling' must be mean or cls")
        dims = EMBEDDING_DIMENSIONS[model]
        data = [hash_embedding(t, dims, pooling or "mean") for t in texts]
        return {"shape": [len(data), dims], "data": data, "pooling": pooling or "mean"}


def hash_embedding(text: str, dims: int, pooling: str) -> list[float]:
    """Bag of hashed words, L2-normalised; `mean` vectors are rotated so they never match `cls`."""
    v = [0.0] * dims
    for word in WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
        v[(h + (7 if pooling == "mean" else 0)) % dims] += 1.0
    if not any(v):
        v[0] = 1.0
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)}


def _rerank(body: dict[str, Any]) -> dict[str, Any]:
    query, contexts = body.get("query"), body.get("contexts")
    if not isinstance(query, str) or not isinstance(contexts, list) or not contexts:
        raise FakeError(400, 5006, "'query' (string) and 'contexts' (array) are required")
    if not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in contexts):
        raise FakeError(400, 5006, "each context must be {'text': string}")
    q = _words(query)
    scored = [
        {"id": i, "score": len(q & _words(c["text"])) / max(1, len(q))}
        for i, c in enumerate(contexts)
    ]
    scored.sort(key=lambda s: (-s["score"], s["id"]))
    top_k = body.get("top_k")
    return {"response": scored[:top_k] if isinstance(top_k, int) else scored}


def _generate(body: dict[str, Any]) -> Any:
    messages, prompt = body.get("messages"), body.get("prompt")
    if messages is None and not isinstance(prompt, str):
        raise FakeError(400, 5006, "'messages' or 'prompt' is required")
    if messages is not None and (
        not isinstance(messages, list)
        or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
    ):
        raise FakeError(400, 5006, "each message needs 'role' and 'content'")
    text = prompt if messages is None else " ".join(str(m["content"]) for m in messages)
    max_tokens = body.get("max_tokens", 256)  # Workers AI's silent default
    words = ["Answer:", *WORD.findall(text)][: int(max_tokens)]
    usage = {
        "prompt_tokens": len(WORD.findall(text)),
        "completion_tokens": len(words),
        "total_tokens": len(WORD.findall(text)) + len(words),
    }
    if body.get("stream"):
        return _Stream([w + " " for w in words], usage)
    return {"response": " ".join(words), "usage": usage}


@dataclass
class _Stream:
    pieces: list[str]
    usage: dict[str, int]

    async def send(self, send: Any, delay: float) -> None:
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        for piece in self.pieces:
            event = json.dumps({"response": piece, "p": "abc"})
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {event}\n\n".encode(),
                    "more_body": True,
                }
            )
            if delay:
                await asyncio.sleep(delay)
        tail = json.dumps({"response": "", "usage": self.usage})
        body = f"data: {tail}\n\ndata: [DONE]\n\n".encode()
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_json(send: Any, status: int, body: Any, extra: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
