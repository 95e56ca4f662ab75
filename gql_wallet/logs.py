"""Logging: one structured line per request, the request id on every line of a request."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pythonjsonlogger.json import JsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter

logger = logging.getLogger("gql_wallet")
request_logger = logging.getLogger("gql_wallet.request")

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class RequestInfo:
    """What the GraphQL layer learns about a request, for its log line and metrics."""

    operation: str = "-"
    outcome: str = "-"
    principal_kind: str | None = None
    organization_id: str | None = None
    variables: object = None


request_info: ContextVar[RequestInfo | None] = ContextVar("request_info", default=None)


def current_request() -> RequestInfo:
    """This request's info (a throwaway one outside a request)."""
    return request_info.get() or RequestInfo()


def accept_request_id(header: str | None) -> str:
    """The caller's X-Request-ID if it is a sane token, else a new one."""
    if header and _CLIENT_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class _LineFormatter(OrjsonFormatter):
    """orjson for speed; the stdlib encoder for what orjson refuses (integers beyond 64 bits, lone
    surrogates: both can arrive in logged variables), so that no request loses its log line."""

    _fallback = JsonFormatter()
    # The last whole second formatted, and its text: every request's line formats its time, and
    # time.strftime was a fifth of the line's CPU. Only the milliseconds change within a second.
    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging.Formatter's text for the record's time, the date and time part remembered."""
        msec_format = self.default_msec_format
        if datefmt is not None or msec_format is None or self.converter is not time.localtime:
            return super().formatTime(record, datefmt)
        whole = int(record.created)
        second, text = self._second
        if second != whole:
            text = time.strftime(self.default_time_format, time.localtime(whole))
            self._second = (whole, text)
        return msec_format % (text, record.msecs)

    def jsonify_log_record(self, log_data: Any) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except TypeError:
            return self._fallback.jsonify_log_record(log_data)


def stderr_handler(log_format: str) -> logging.Handler:
    """The one handler of every process: JSON lines (default) or plain text on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(
            _LineFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    # No line names the thread, the process or the caller's source line, and every record
    # computed them: finding the caller alone walks the stack (Python's logging HOWTO,
    # "Optimization"). About a third of the request log line's CPU.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    return handler


_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(log_format: str, level: str = "INFO") -> None:
    """JSON lines (default) or plain text on stderr, for gql_wallet, uvicorn and alembic."""
    root = logging.getLogger()
    root.handlers[:] = [stderr_handler(log_format)]
    root.setLevel(level)
    for name in _UVICORN_LOGGERS:
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """configure_logging as a `logging.config.dictConfig` dict, which uvicorn applies in every
    process it starts: worker processes are spawned, so they inherit no logging configuration
    (with `--workers 2` or more, the request log lines of the workers went nowhere)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"()": f"{__name__}.stderr_handler", "log_format": log_format}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {name: {"handlers": [], "propagate": True} for name in _UVICORN_LOGGERS},
    }
