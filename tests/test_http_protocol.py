"""The HTTP protocol that serves gql_wallet: uvicorn's httptools protocol, a response per write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from gql_wallet.cli import http_protocol
from gql_wallet.http_protocol import HttpProtocol
from gql_wallet.settings import Settings

REQUEST = b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}"


class RecordingTransport(asyncio.Transport):
    """What the protocol writes to the socket, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


async def _serve(app: Any, request: bytes) -> RecordingTransport:
    config = uvicorn.Config(app, http=HttpProtocol, log_level="warning")
    config.load()
    protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if transport.writes:
            break
    await asyncio.sleep(0.02)  # anything written later would show up as a second write
    protocol.connection_lost(None)
    return transport


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    body = b'{"data":{"ok":true}}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", b"r1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def test_a_response_leaves_in_one_write_with_its_headers_and_body() -> None:
    transport = await _serve(answer, REQUEST)
    [written] = transport.writes
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nx-request-id: r1" in head and b"\r\ncontent-type: application/json" in head
    assert body == b'{"data":{"ok":true}}'


async def test_a_streamed_response_keeps_its_order() -> None:
    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0)  # a later step of the event loop: a write of its own
        await send({"type": "http.response.body", "body": b"three"})

    transport = await _serve(streamed, REQUEST)
    assert len(transport.writes) >= 2  # the parts sent in later steps were not held back
    written = b"".join(transport.writes)
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n")


async def test_closing_sends_what_is_held_first() -> None:
    async def closes(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"connection", b"close"), (b"content-length", b"3")],
            }
        )
        await send({"type": "http.response.body", "body": b"bye"})

    transport = await _serve(closes, REQUEST)
    assert transport.closed
    assert b"".join(transport.writes).endswith(b"\r\n\r\nbye")


def test_the_stock_protocol_is_the_default_and_ours_is_opt_in() -> None:
    assert http_protocol(Settings()) == "auto"
    chosen = http_protocol(Settings(http_single_write=True))
    module, _, name = chosen.partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is HttpProtocol


def test_our_protocol_is_pinned_to_the_uvicorn_it_was_tested_on() -> None:
    """HttpProtocol subclasses uvicorn's private httptools_impl: a new uvicorn must be tested
    with it (this file) before the pin in constraints.txt moves."""
    pins = (Path(__file__).resolve().parents[1] / "constraints.txt").read_text().splitlines()
    assert f"uvicorn=={uvicorn.__version__}" in pins
