"""The package logger and the request id every log line of a request carries."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

logger = logging.getLogger("gql_wallet")

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def accept_request_id(header: str | None) -> str:
    """The caller's X-Request-ID if it is a sane token, else a new one."""
    if header and _CLIENT_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex
