"""Prometheus metrics. With several server processes, `gql-wallet serve` points
PROMETHEUS_MULTIPROC_DIR at a fresh folder before the workers start, so that every scrape sums
all of them (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "gql_wallet_requests",
    "GraphQL HTTP requests, by operation (root fields) and outcome.",
    ["operation", "outcome"],
)
LATENCY = Histogram(
    "gql_wallet_request_duration_seconds",
    "GraphQL HTTP request latency, by operation and outcome.",
    ["operation", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
USER_ERRORS = Counter(
    "gql_wallet_user_errors", "userErrors returned by mutations, by code.", ["code"]
)
LEDGER_WRITES = Counter("gql_wallet_ledger_writes", "Ledger entries committed, by type.", ["type"])
WEBHOOK_DELIVERIES = Counter(
    "gql_wallet_webhook_deliveries",
    "Webhook delivery attempts, by outcome: succeeded, retrying (the attempt failed and another "
    "is scheduled) or failed (no retry left).",
    ["outcome"],
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "gql_wallet_webhook_oldest_pending_seconds",
    "Age of the oldest change whose webhook events are not yet delivered to every subscribed "
    "endpoint (0: none), as this process last looked.",
    multiprocess_mode="max",
)
WRITE_GROUP_SIZE = Histogram(
    "gql_wallet_write_group_size",
    "Ledger writes committed together in one database transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
DB_IN_USE = Gauge(
    "gql_wallet_db_connections_in_use",
    "Pooled database connections checked out.",
    multiprocess_mode="livesum",
)
DB_WAITING = Gauge(
    "gql_wallet_db_connections_waiting",
    "Requests waiting for a pooled database connection.",
    multiprocess_mode="livesum",
)
SUBSCRIPTION_CONNECTIONS = Gauge(
    "gql_wallet_subscription_connections",
    "Open WebSocket connections for subscriptions.",
    multiprocess_mode="livesum",
)

SUBSCRIPTION_GROUPS = Gauge(
    "gql_wallet_subscription_groups",
    "Groups of identical subscriptions that share one execution per event.",
    multiprocess_mode="livesum",
)
SUBSCRIPTION_EXECUTIONS = Counter(
    "gql_wallet_subscription_executions",
    "Executions of a subscription event, each shared by every member of a group.",
)


def render() -> bytes:
    """The current metrics in the Prometheus text format (all processes in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()
