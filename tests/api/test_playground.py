"""The playground at `/` in headless Chromium (Debian's `chromium`, driven by Playwright):
pick an instance, ask, watch the answer stream in, see the sources with their scores."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.api.test_legacy import client, database_url  # noqa: F401

CHROMIUM = os.environ.get("RAGD_TEST_CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.async_api")


async def until(read: Callable[[], Awaitable[str | None]], wanted: str) -> None:
    """Poll `read` until it returns `wanted` (for up to a minute)."""
    async with asyncio.timeout(60):
        while await read() != wanted:  # noqa: ASYNC110 (the page is not ours to signal)
            await asyncio.sleep(0.1)


@pytest.fixture
def chromium() -> str:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    return CHROMIUM


async def test_playground_streams_an_answer_with_sources(
    client: httpx.AsyncClient,  # noqa: F811
    chromium: str,
    tmp_path: Path,
) -> None:
    page_html = await client.get("/")
    assert page_html.status_code == 200 and "text/html" in page_html.headers["content-type"]
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{client.base_url}/#token=test-token")
            # Polled from here: the page's CSP forbids the eval that wait_for_function uses.
            await until(lambda: page.input_value("#instance"), "default/instances/default")
            assert "token" not in page.url  # the token leaves the address bar at once
            await page.fill("#question", "How do I bake bread?")
            await page.click("#send")
            await page.wait_for_selector("#sources .source")
            await until(lambda: page.text_content("#status"), "done")
            answer = await page.inner_text("#answer")
            assert len(answer.split()) > 5 and "bread" in answer.lower()
            first = page.locator("#sources .source").first
            assert (
                await first.locator(".head span").first.inner_text() == "kitchen/recipes/bread.md"
            )
            assert "score" in await first.locator(".score").inner_text()
            shot = tmp_path / "playground.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if target := os.environ.get("RAGD_TEST_SCREENSHOT"):
                shutil.copy(shot, target)
            assert errors == []
        finally:
            await browser.close()
