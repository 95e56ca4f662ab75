"""A minimal graphql-transport-ws client on `websockets`, for tests that need protocol details."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets

SUBSCRIBE = """subscription($c: String!, $cur: String) { walletUpdated(customerId: $c, currency: $cur) {
  wallet { id customerId currency balance modifiedAt }
  transaction { id type amount balanceAfter idempotencyKey createdAt } } }"""


class Socket:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    async def subscribe(
        self, customer_id: str, currency: str | None = None, query: str = SUBSCRIBE
    ) -> str:
        self.next_id += 1
        op = str(self.next_id)
        await self.ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": op,
                    "payload": {
                        "query": query,
                        "variables": {"c": customer_id, "cur": currency},
                    },
                }
            )
        )
        return op

    async def receive(self) -> dict[str, Any]:
        while True:
            message = json.loads(await self.ws.recv())
            if message["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
                continue
            return dict(message)

    async def complete(self, op: str) -> None:
        await self.ws.send(json.dumps({"type": "complete", "id": op}))

    async def update(self) -> dict[str, Any]:
        """The next walletUpdated event (fails on anything else)."""
        message = await self.receive()
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        return dict(message["payload"]["data"]["walletUpdated"])


@asynccontextmanager
async def connect(url: str, token: str | None, **kwargs: Any) -> AsyncIterator[Socket]:
    ws_url = url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], **kwargs) as ws:
        payload = {"Authorization": f"Bearer {token}"} if token else {}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        socket = Socket(ws)
        if token:
            ack = await socket.receive()
            assert ack["type"] == "connection_ack", ack
        yield socket
