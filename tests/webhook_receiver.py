"""A real HTTP receiver on loopback for webhook tests: an asyncio server that records every
request and answers by its path.

- `/ok`: 200.
- `/fail/N`: 500 to the first N attempts of each webhook-id, then 200.
- `/close/N`: closes the connection without an answer for the first N attempts, then 200.
- `/hang`: never answers (until the client gives up).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    status: int | None  # what it answered; None: no answer


@dataclass
class Receiver:
    requests: list[Received] = field(default_factory=list)
    tries: Counter[tuple[str, str]] = field(default_factory=Counter)
    server: asyncio.Server | None = None
    port: int = 0
    connections: set[asyncio.StreamWriter] = field(default_factory=set)
    accepted: int = 0  # connections, over all time

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answered(self, path: str | None = None, status: int = 200) -> list[Received]:
        return [r for r in self.requests if r.status == status and (path is None or r.path == path)]

    async def wait_for(self, count: int, path: str | None = None, seconds: float = 20) -> None:
        """Until `count` requests to `path` got a 200."""
        deadline = time.monotonic() + seconds
        while len(self.answered(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.answered(path))} of {count} deliveries to {path} in {seconds} s: "
                    f"{[(r.path, r.status) for r in self.requests][-20:]}"
                )
            await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        self.accepted += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = await self._answer(path, headers)
                self.requests.append(Received(path, headers, body, time.monotonic(), status))
                if status is None:
                    return
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self.connections.discard(writer)
            writer.close()

    async def _answer(self, path: str, headers: dict[str, str]) -> int | None:
        kind, _, count = path.strip("/").partition("/")
        self.tries[(path, headers.get("webhook-id", ""))] += 1
        tried = self.tries[(path, headers.get("webhook-id", ""))]
        if kind == "fail" and tried <= int(count):
            return 500
        if kind == "close" and tried <= int(count):
            return None
        if kind == "hang":
            await asyncio.sleep(3600)
        return 200

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.connections):
            writer.close()
