"""The server closes a connection whose request head trickles in (one header every so often)
instead of holding it open; complete requests and keep-alive are unaffected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from rag_service.api.server import HeaderDeadlineProtocol, server_config
from tests.serving import free_port


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(HeaderDeadlineProtocol, "header_timeout", 1.0)
    chosen = free_port()
    server = uvicorn.Server(server_config(hello, "127.0.0.1", chosen, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield chosen
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def closed_after(reader: asyncio.StreamReader, seconds: float) -> float | None:
    """When the server closed the connection (EOF), or None if it was still open."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(1024), seconds):
            pass
    except TimeoutError:
        return None
    return time.monotonic() - started


async def test_a_trickling_request_head_is_cut_off(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = False
    for n in range(8):  # a header every 0.4 s: 3.2 s in all, past the 1 s deadline
        await asyncio.sleep(0.4)
        if writer.is_closing() or reader.at_eof():
            break
        try:
            writer.write(f"X-Slow-{n}: y\r\n".encode())
            await writer.drain()
        except ConnectionError:
            closed = True
            break
    closed = closed or await closed_after(reader, 1.0) is not None
    assert closed and time.monotonic() - started < 3.0
    writer.close()


async def test_an_idle_connection_that_never_speaks_is_cut_off(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await closed_after(reader, 3.0) is not None
    writer.close()


async def test_whole_requests_and_keep_alive_work(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(3):  # one connection, three requests, spaced past the head deadline
            assert (await http.get("/")).text == "ok"
            await asyncio.sleep(0.3)
