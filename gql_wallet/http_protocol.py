"""uvicorn's HTTP protocol (httptools), with each response sent in one write.

An ASGI response is two messages, its start (status and headers) and its body, and uvicorn
writes each to the socket as it comes: two system calls and, on a local connection, two
deliveries to the client. Every write uvicorn makes during one step of the event loop is held
and sent together at the end of that step instead; the two messages of a response are sent in
the same step, so they leave in one write (what it saves: bench/PROFILE.md).

Nothing else changes: the same bytes in the same order, flow control as before (the held bytes
reach the real transport's buffer one step later), close() sends what is held first, and a
WebSocket upgrade hands the real transport to the WebSocket protocol.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWritePerStep:
    """A transport that holds the writes of one event-loop step and sends them as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.held:
            self.loop.call_soon(self.flush)
        self.held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self.held:
            return
        data = b"".join(self.held) if len(self.held) > 1 else self.held[0]
        self.held.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(map(len, self.held))

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self.transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; each response leaves in one write (see the module)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held: Any = _OneWritePerStep(transport, self.loop)
        super().connection_made(held)

    def handle_websocket_upgrade(self) -> None:
        if isinstance(self.transport, _OneWritePerStep):
            self.transport.flush()
            self.transport = self.transport.transport
        super().handle_websocket_upgrade()
