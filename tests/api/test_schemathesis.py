"""Schemathesis over real HTTP: every operation of GET /schema, with generated valid (positive) and
invalid (negative) requests, answers without a 5xx and as its schema says.

Fixed seed, EXAMPLES examples per operation and mode. Checks: not_a_server_error,
status_code_conformance, content_type_conformance, response_schema_conformance (the schema
declares every 4xx as Cloudflare's error envelope), response_headers_conformance and, on negative
cases, negative_data_rejection (invalid input is a 4xx) and ignored_auth (a request without the
token is refused). positive_data_acceptance is off: schema-valid requests still meet 404s (random
ids) and rules a JSON schema cannot say ('query' or 'messages').
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.checks
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from pydantic import BaseModel
from schemathesis import APIOperation, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.schemas import OpenApiSchema

from rag_service.api.items import IndexRequest, KeyIndexRequest
from rag_service.api.options import ChatRequest, SearchRequest
from rag_service.api.requests import model_schema
from rag_service.config import Settings
from tests.api.test_legacy import AUTH, served

SEED = 20_251_202
EXAMPLES = 25  # per operation and generation mode
SCRATCH = "scratch"  # the instance that PUT and DELETE of an instance get, not `default`

# Bodies that handlers of rag_service/api/search.py and items.py read with read_json but do not
# declare yet (operation_class=json_body(...)); filled in here only while the schema lacks them,
# with whether the answer may be server-sent events.
UNDECLARED_BODIES: dict[tuple[str, str], tuple[type[BaseModel], bool]] = {
    ("post", "/instances/{instance_id}/search"): (SearchRequest, False),
    ("post", "/instances/{instance_id}/chat/completions"): (ChatRequest, True),
    ("put", "/instances/{instance_id}/items"): (KeyIndexRequest, False),
    ("patch", "/instances/{instance_id}/items/{item_id}"): (IndexRequest, False),
}
EVENTS = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "properties": {"data": {"type": "string"}},
            "required": ["data"],
        }
    }
}


CONFIG = schemathesis.Config.from_dict(
    {
        # The token of `settings`, sent as the schema's bearer scheme says (and left out where a
        # negative case tests that a request without it is refused).
        "auth": {"openapi": {"bearer": {"bearer": AUTH["Authorization"].removeprefix("Bearer ")}}},
        # Unknown query parameters are ignored, as by Cloudflare: no negative cases of them.
        "generation": {"allow-extra-parameters": False},
    }
)


def checks_for(label: str, mode: GenerationMode) -> list[Any]:
    c = schemathesis.checks
    checks = [
        c.not_a_server_error,
        c.status_code_conformance,
        c.response_schema_conformance,
        c.response_headers_conformance,
    ]
    if label != "GET /metrics":  # Prometheus' text, declared as JSON by rag_service/api/metrics.py
        checks.append(c.content_type_conformance)
    if mode is GenerationMode.NEGATIVE:
        checks += [c.negative_data_rejection, c.ignored_auth]
    return checks


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"


def with_bodies(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for path, item in doc["paths"].items():
        for (method, suffix), (model, streams) in UNDECLARED_BODIES.items():
            operation = item.get(method)
            if operation is None or not path.endswith(suffix) or "requestBody" in operation:
                continue
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": model_schema(model).to_schema()}},
            }
            if streams:
                operation["responses"]["200"]["content"].update(EVENTS)
    return doc


def path_parameters(method: str, path: str) -> dict[str, str]:
    """`default` wherever an instance or namespace is named (deeper than a 404), but the
    instance that PUT and DELETE change is a scratch one: the run keeps `default` as it is."""
    fixed = {"namespace": "default", "instance_id": "default"}
    if method in ("PUT", "DELETE") and path.endswith("/instances/{instance_id}"):
        fixed["instance_id"] = SCRATCH
    return {k: v for k, v in fixed.items() if "{" + k + "}" in path}


def fuzz(
    operation: APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    base_url: str,
    statuses: Counter[str],
) -> None:
    """EXAMPLES cases of one operation in one mode, each sent and checked; raises the first
    failure Hypothesis finds (after shrinking it)."""
    strategy = operation.as_strategy(
        generation_mode=mode,
        path_parameters=path_parameters(operation.method.upper(), operation.path),
    )
    checks = checks_for(operation.label, mode)

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(base_url=base_url, checks=checks, timeout=30)
        statuses[f"{response.status_code // 100}xx"] += 1

    run()


def run_operations(schema: OpenApiSchema, base_url: str) -> tuple[list[str], Counter[str]]:
    """Every operation, positive then negative: the failures (one per operation and mode, each
    with its reproduction) and the count of answers by status class."""
    failures: list[str] = []
    statuses: Counter[str] = Counter()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an Err: a part of the schema it cannot read
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, base_url, statuses)
            except Unsatisfiable:  # nothing to make invalid: no parameters and no body
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures, statuses


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    settings: Settings, tmp_path: Path
) -> None:
    async with served(settings, tmp_path / "src") as http:
        base_url = str(http.base_url).rstrip("/")
        scratch = {"id": SCRATCH, "source": str(tmp_path / "src")}
        resp = await http.post("/accounts/acc/ai-search/instances", json=scratch, headers=AUTH)
        assert resp.status_code == 200, resp.text
        doc = (await http.get("/schema", headers=AUTH)).json()
        schema = schemathesis.openapi.from_dict(with_bodies(doc), config=CONFIG)
        started = time.monotonic()
        failures, statuses = await asyncio.to_thread(run_operations, schema, base_url)
        took = time.monotonic() - started
        assert (await http.get("/readyz")).status_code == 200  # the server is still well
    operations = len(list(schema.get_all_operations()))
    answers = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    print(f"schemathesis: {operations} operations in {took:.0f}s (seed {SEED}): {answers}")
    assert operations >= 50
    assert not failures, "\n\n".join(failures)
