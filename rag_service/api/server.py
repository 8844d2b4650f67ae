"""The HTTP server's settings: uvicorn with a deadline on reading a request's headers, which
uvicorn itself does not have (a client sending one header line every few seconds would hold
a connection, and a worker's attention, for as long as it likes)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0  # from the first byte of a request (or the connection) to its last header
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this long


class HeaderDeadlineProtocol(H11Protocol):
    """h11 with a deadline on request heads; the body and the response are not limited."""

    header_timeout = HEADER_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading_head():
            if self._deadline is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _reading_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._reading_head() and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=HeaderDeadlineProtocol,
        timeout_keep_alive=int(KEEP_ALIVE_S),
        **options,
    )
