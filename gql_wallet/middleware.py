"""Per-request plumbing for every HTTP request: the request id (accepted from and returned in
X-Request-ID), one structured log line, and the request metrics of /graphql."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gql_wallet import metrics
from gql_wallet.logs import RequestInfo, accept_request_id, request_id, request_info, request_logger


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, log_variables: bool = False) -> None:
        self.app = app
        self.log_variables = log_variables
        # The metric children by (operation, outcome): `labels()` takes a lock and builds its
        # key on every call. prometheus_client keeps every child anyway, so this holds no more.
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _metrics(self, operation: str, outcome: str) -> tuple[Any, Any]:
        children = self._children.get((operation, outcome))
        if children is None:
            children = (
                metrics.REQUESTS.labels(operation, outcome),
                metrics.LATENCY.labels(operation, outcome),
            )
            self._children[(operation, outcome)] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = accept_request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        request_id.set(rid)
        info = RequestInfo()
        request_info.set(info)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", rid.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            path = scope.get("path", "")
            if path == "/graphql" and info.outcome != "-":
                counter, histogram = self._metrics(info.operation, info.outcome)
                counter.inc()
                histogram.observe(duration)
            fields: dict[str, object] = {
                "event": "request",
                "request_id": rid,
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "duration_ms": round(duration * 1000, 2),
                "operation": info.operation,
                "outcome": info.outcome,
                "principal_kind": info.principal_kind,
                "organization_id": info.organization_id,
            }
            if self.log_variables and info.variables is not None:
                fields["variables"] = info.variables
            request_logger.info("request", extra=fields)
