"""The README's first command, end to end: `ragd up` offline on the shipped sample documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serving import free_port


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("up-data")
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGD_GENERATION_MAX_TOKENS": "48",
        "RAGD_SOURCE_ROOTS": str(tmp_path_factory.getbasetemp()),  # the tests' folders
    }
    env.pop("RAGD_API_TOKENS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rag_service.cli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise AssertionError("ragd up did not answer /healthz")
        token = (data / "api-token").read_text().strip()
        yield base, token
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        assert "Traceback" not in out, out
        assert proc.returncode in (0, -15), out


def search(base: str, token: str, query: str) -> dict[str, object]:
    """The first sync runs in the background at start: wait for it to land."""
    for _ in range(240):
        resp = httpx.post(
            f"{base}/search",
            json={"query": query},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,  # the first search loads the models while the first sync embeds
        )
        assert resp.status_code == 200, resp.text
        page: dict[str, object] = resp.json()["result"]
        if page["data"]:
            return page
        time.sleep(0.5)
    raise AssertionError("the sample documents were never indexed")


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How hot should the water be for green tea?", "green-tea.txt"),
        ("How long does bulk fermentation of the dough take?", "sourdough-bread.md"),
        ("Which planet is the largest?", "solar-system.md"),
        ("How do I repair a punctured inner tube?", "bicycle-maintenance.html"),
    ],
)
def test_search_finds_the_right_sample_first(
    service: tuple[str, str], question: str, expected: str
) -> None:
    page = search(*service, question)
    assert page["data"][0]["filename"] == expected  # type: ignore[index]


def test_ai_search_streams_before_generation_ends(service: tuple[str, str]) -> None:
    base, token = service
    search(base, token, "green tea")
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    with httpx.stream(
        "POST",
        f"{base}/ai-search",
        json={
            "query": "How hot should the water be for green tea?",
            "stream": True,
            "model": "smollm2",
        },  # the shipped LLM: it writes for a while
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic() - started, line[6:]))
    assert arrivals[-1][1] == "[DONE]"
    pieces = [(t, json.loads(d)) for t, d in arrivals[:-1]]  # AutoRAG's: the response alone
    assert len(pieces) >= 5 and all(set(p) == {"response"} for _, p in pieces)
    assert "".join(p["response"] for _, p in pieces).strip()
    first_piece, done_at = pieces[0][0], arrivals[-1][0]
    assert first_piece < done_at - 0.3, (first_piece, done_at)  # streamed, not buffered


def test_the_readme_questions_get_right_answers(service: tuple[str, str]) -> None:
    """The offline default (extractive) on the README's own questions."""
    base, token = service
    search(base, token, "green tea")
    expected = {
        "How hot should the water be for green tea?": ("80 degrees", "green-tea.txt"),
        "How long does sourdough bulk fermentation take?": ("four to six hours", "sourdough"),
        "How do I fix a flat tyre?": ("puncture", "bicycle-maintenance.html"),
    }
    for question, (fact, source) in expected.items():
        resp = httpx.post(
            f"{base}/ai-search",
            json={"query": question},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        answer = resp.json()["result"]["response"]
        assert fact in answer and f"[{source}" in answer, (question, answer)
