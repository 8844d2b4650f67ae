"""`POST /search` served by two `ragd serve` OS processes behind one address against one
process, interleaved in the same run so that machine noise hits both.

"One address": the client's transport sends each request to the next process in turn (round
robin), as a load balancer in front of two hosts would. The one-process measurement goes through
the same transport with a single target, to the first of the two processes (the second stays
idle meanwhile), so both sides pay the same client costs and talk to warmed-up servers."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from rag_service.benchmarks.index import BenchProgress
from rag_service.benchmarks.machine import percentiles_ms, spread

ROUNDS = 3
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0

Measure = Callable[[httpx.AsyncClient], Awaitable[tuple[list[float], float]]]
Warm = Callable[[httpx.AsyncClient], Awaitable[object]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float | None:
    """The resident memory of a live process in MiB (Linux), else None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


@dataclass
class ServeProcess:
    """One `ragd serve` on a loopback port; its stdout and stderr go to `log`."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    out: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 20) -> str:
        self.out.flush()
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT_S)
        finally:
            self.out.close()


def start_serve(env: Mapping[str, str], log: Path) -> ServeProcess:
    port = free_port()
    out = log.open("wb")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag_service.cli", "serve", "--port", str(port)],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    except BaseException:
        out.close()
        raise
    return ServeProcess(port, log, proc, out)


async def wait_healthy(procs: Sequence[ServeProcess], within_s: float = START_TIMEOUT_S) -> None:
    """Until `GET /healthz` answers 200 on each; a process that exits or a deadline that passes
    raises with the end of that process's output."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=5) as http:
        for p in procs:
            while True:
                code = p.proc.poll()
                if code is not None:
                    raise RuntimeError(
                        f"`ragd serve` on port {p.port} exited with {code}:\n{p.tail()}"
                    )
                try:
                    if (await http.get(f"{p.url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"`ragd serve` on port {p.port} not healthy after {within_s:.0f} s:\n"
                        f"{p.tail()}"
                    )
                await asyncio.sleep(0.2)


def serve_env(data_dir: Path, source: str | None, token: str) -> dict[str, str]:
    """This process's environment with the settings the benchmark's in-process runtime used
    (explicit ones win over inherited `RAGD_` variables, as they did there)."""
    env = {
        **os.environ,
        "RAGD_DATA_DIR": str(data_dir),
        "RAGD_API_TOKENS": token,
        "HF_HUB_OFFLINE": "1",
    }
    if source is not None:
        env["RAGD_SOURCE"] = source
    return env


@asynccontextmanager
async def serve_processes(
    count: int, env: Mapping[str, str], logs: Path
) -> AsyncIterator[list[ServeProcess]]:
    """`count` `ragd serve` processes, healthy; killed on the way out."""
    procs: list[ServeProcess] = []
    try:
        for i in range(count):
            procs.append(start_serve(env, logs / f"serve-{i}.log"))
        await wait_healthy(procs)
        yield procs
    finally:
        for p in procs:
            p.stop()


class RoundRobin(httpx.AsyncBaseTransport):
    """Sends each request to the next of `urls` in turn, whatever its own host, through a
    connection pool per target; `sent` counts the requests each target got."""

    def __init__(self, urls: Sequence[str], limits: httpx.Limits) -> None:
        if not urls:
            raise ValueError("RoundRobin needs at least one URL")
        self.targets = [httpx.URL(u) for u in urls]
        self.transports = [httpx.AsyncHTTPTransport(limits=limits) for _ in urls]
        self.sent = [0] * len(urls)
        self._next = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = self._next
        self._next = (i + 1) % len(self.targets)
        target = self.targets[i]
        request.url = request.url.copy_with(
            scheme=target.scheme, host=target.host, port=target.port
        )
        request.headers["Host"] = target.netloc.decode("ascii")
        self.sent[i] += 1
        return await self.transports[i].handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()


def _client(urls: Sequence[str], token: str, clients: int) -> tuple[httpx.AsyncClient, RoundRobin]:
    transport = RoundRobin(urls, httpx.Limits(max_connections=clients))
    client = httpx.AsyncClient(
        base_url=urls[0],
        transport=transport,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    return client, transport


async def compare(
    env: Mapping[str, str],
    logs: Path,
    token: str,
    clients: int,
    measure: Measure,
    warm: Warm,
    rounds: int = ROUNDS,
    progress: BenchProgress | None = None,
) -> dict[str, Any]:
    """Start two `ragd serve` processes, warm each up (`warm`, with a client of its own), then
    `rounds` times: `measure` against the first process alone, then against both in turn.
    `measure(client)` sends its queries `clients` at a time: per-request seconds and the wall
    time."""
    if rounds < 2:
        raise ValueError("the process comparison needs at least 2 rounds")
    if progress:
        progress("starting 2 `ragd serve` processes", 0, None)
    t0 = time.perf_counter()
    async with serve_processes(2, env, logs) as procs:
        healthy_s = time.perf_counter() - t0
        urls = [p.url for p in procs]
        modes = {"one": urls[:1], "two": urls}
        runs: dict[str, list[float]] = {mode: [] for mode in modes}
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        sent: dict[str, list[int]] = {}
        pairs = {mode: _client(targets, token, clients) for mode, targets in modes.items()}
        try:
            for url in urls:
                single, _ = _client([url], token, 1)
                async with single:  # closes its transport too
                    await warm(single)
            ready_s = time.perf_counter() - t0
            for r in range(rounds):
                for mode, (client, _) in pairs.items():
                    if progress:
                        label = "1 process" if mode == "one" else "2 processes"
                        progress(f"{label}, {clients} clients, round {r + 1}", r, rounds)
                    per_request, wall = await measure(client)
                    runs[mode].append(len(per_request) / wall)
                    times[mode].extend(per_request)
            memory = [rss_mb(p.proc.pid) for p in procs]
        finally:
            for mode, (client, transport) in pairs.items():
                sent[mode] = list(transport.sent)
                await client.aclose()
    section: dict[str, Any] = {
        "clients": clients,
        "rounds": rounds,
        "order": "one process, two processes, repeated",
        "balancing": "client-side round robin over the processes' base URLs",
        "start_to_healthy_s": round(healthy_s, 1),
        "start_to_warm_s": round(ready_s, 1),
        "rss_mb_per_process": memory,
    }
    for mode, count in (("one", 1), ("two", 2)):
        section[mode] = {
            "processes": count,
            "requests_per_s": round(statistics.median(runs[mode]), 2),
            "runs_requests_per_s": [round(x, 2) for x in runs[mode]],
            "requests": len(times[mode]),
            "requests_by_process": sent[mode],
            "latency_ms": percentiles_ms(times[mode]),
        }
    section["ratio"] = round(section["two"]["requests_per_s"] / section["one"]["requests_per_s"], 3)
    return section


def summary_lines(section: dict[str, Any]) -> list[str]:
    one, two = section["one"], section["two"]
    return [
        f"  `ragd serve` processes at {section['clients']} clients, {section['rounds']} "
        f"interleaved rounds each (started and healthy in {section['start_to_healthy_s']} s):",
        f"    1 process:   {one['requests_per_s']} requests/s, {spread(one['latency_ms'])}",
        f"    2 processes: {two['requests_per_s']} requests/s, {spread(two['latency_ms'])}",
        f"    ratio two/one {section['ratio']} (requests by process {two['requests_by_process']})",
    ]
