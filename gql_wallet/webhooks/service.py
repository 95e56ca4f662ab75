"""Webhook endpoints, low-balance thresholds and deliveries, as an organization manages them:
each rule of their input checked here, once; every refusal a typed UserError, writing nothing."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass, field

from gql_wallet import repository as repo
from gql_wallet.db import Database
from gql_wallet.errors import ErrorCode, UserError
from gql_wallet.money import check_amount, check_owner, check_text, normalize_currency
from gql_wallet.repository.webhooks import DeliveryRecord, EndpointRecord
from gql_wallet.webhooks.events import EVENT_TYPES
from gql_wallet.webhooks.guard import check_url

MAX_URL_LENGTH = 2000
MAX_DESCRIPTION_LENGTH = 500


@dataclass(frozen=True)
class EndpointResult:
    endpoint: EndpointRecord | None = None
    secret: str | None = None  # shown once: when created or rotated
    errors: tuple[UserError, ...] = field(default_factory=tuple)


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _invalid(message: str, name: str, code: ErrorCode = ErrorCode.INVALID_INPUT) -> UserError:
    return UserError(code, message, ("input", name))


async def _check(
    url: str | None, event_types: list[str] | None, description: str | None, allow_loopback: bool
) -> list[UserError]:
    errors = [*check_text(description, "description", MAX_DESCRIPTION_LENGTH)]
    if event_types is not None:
        unknown = sorted(set(event_types) - set(EVENT_TYPES))
        if not event_types or unknown:
            errors.append(
                _invalid(
                    f"events must be one or more of {', '.join(EVENT_TYPES)}"
                    + (f"; unknown: {', '.join(map(repr, unknown))[:200]}." if unknown else "."),
                    "events",
                )
            )
    if url is not None:
        if text_errors := check_text(url, "url", MAX_URL_LENGTH, required=True):
            errors += text_errors
        elif why := await check_url(url, allow_loopback):
            errors.append(_invalid(why, "url", ErrorCode.WEBHOOK_URL_NOT_ALLOWED))
    return errors


def _types(event_types: list[str]) -> list[str]:
    return sorted(set(event_types), key=EVENT_TYPES.index)


def _endpoint_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _check_id(text: str, name: str) -> EndpointResult | None:
    """INVALID_INPUT for an ID that is not text at all (else: not found, or found)."""
    errors = check_text(text, name, 100, required=True)
    return EndpointResult(errors=tuple(errors)) if errors else None


def _not_found(name: str = "id") -> EndpointResult:
    return EndpointResult(
        errors=(
            _invalid(
                "Your organization has no webhook endpoint with this ID.",
                name,
                ErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND,
            ),
        )
    )


async def create_endpoint(
    database: Database,
    organization_id: uuid.UUID,
    url: str,
    event_types: list[str],
    description: str | None,
    allow_loopback: bool,
) -> EndpointResult:
    if errors := await _check(url, event_types, description, allow_loopback):
        return EndpointResult(errors=tuple(errors))
    secret = new_secret()
    async with database.write_transaction() as conn:
        endpoint = await repo.webhooks.insert_endpoint(
            conn, organization_id, url, _types(event_types), description, secret
        )
    return EndpointResult(endpoint, secret)


async def update_endpoint(
    database: Database,
    organization_id: uuid.UUID,
    endpoint_id: str,
    url: str | None,
    event_types: list[str] | None,
    description: str | None,
    allow_loopback: bool,
) -> EndpointResult:
    if refused := _check_id(endpoint_id, "id"):
        return refused
    found = _endpoint_id(endpoint_id)
    if found is None:
        return _not_found()
    if errors := await _check(url, event_types, description, allow_loopback):
        return EndpointResult(errors=tuple(errors))
    values: dict[str, object] = {}
    if url is not None:
        values["url"] = url
    if event_types is not None:
        values["events"] = _types(event_types)
    if description is not None:
        values["description"] = description
    async with database.write_transaction() as conn:
        endpoint = await repo.webhooks.update_endpoint(conn, organization_id, found, **values)
    return _not_found() if endpoint is None else EndpointResult(endpoint)


async def rotate_secret(
    database: Database, organization_id: uuid.UUID, endpoint_id: str
) -> EndpointResult:
    """A new secret at once: every attempt from now on is signed with it."""
    if refused := _check_id(endpoint_id, "id"):
        return refused
    found = _endpoint_id(endpoint_id)
    if found is None:
        return _not_found()
    secret = new_secret()
    async with database.write_transaction() as conn:
        endpoint = await repo.webhooks.update_endpoint(conn, organization_id, found, secret=secret)
    return _not_found() if endpoint is None else EndpointResult(endpoint, secret)


async def delete_endpoint(
    database: Database, organization_id: uuid.UUID, endpoint_id: str
) -> EndpointResult:
    if refused := _check_id(endpoint_id, "id"):
        return refused
    found = _endpoint_id(endpoint_id)
    if found is None:
        return _not_found()
    async with database.write_transaction() as conn:
        endpoint = await repo.webhooks.delete_endpoint(conn, organization_id, found)
    return _not_found() if endpoint is None else EndpointResult(endpoint)


async def list_endpoints(database: Database, organization_id: uuid.UUID) -> list[EndpointRecord]:
    async with database.read_connection() as conn:
        return await repo.webhooks.list_endpoints(conn, organization_id)


async def find_endpoint(
    database: Database, organization_id: uuid.UUID, endpoint_id: str
) -> EndpointRecord | None:
    found = _endpoint_id(endpoint_id)
    if found is None:
        return None
    async with database.read_connection() as conn:
        return await repo.webhooks.get_endpoint(conn, organization_id, found)


async def set_low_balance_threshold(
    database: Database,
    organization_id: uuid.UUID,
    customer_id: str,
    currency: str,
    threshold: int | None,
) -> tuple[repo.WalletRecord | None, tuple[UserError, ...]]:
    """Set (or, with None, clear) the wallet's threshold. The change is a change of the wallet:
    if it moves the available balance across it, the webhooks say so."""
    errors = check_owner(customer_id, currency)
    if threshold is not None:
        errors += [
            UserError(e.code, e.message.replace("amount", "threshold"), ("input", "threshold"))
            for e in check_amount(threshold)
        ]
    if errors:
        return None, tuple(errors)
    code = normalize_currency(currency)
    assert code is not None  # checked
    async with database.write_transaction() as conn:
        seq = await repo.webhooks.set_threshold(conn, organization_id, customer_id, code, threshold)
        wallets = [] if seq is None else await repo.get_wallets_by_seq(conn, [seq])
    if not wallets:
        error = UserError(
            ErrorCode.WALLET_NOT_FOUND,
            "This customer has no wallet in this currency.",
            ("input", "customerId"),
        )
        return None, (error,)
    return wallets[0], ()


async def redeliver(
    database: Database, organization_id: uuid.UUID, delivery_id: str
) -> tuple[DeliveryRecord | None, tuple[UserError, ...]]:
    """One more attempt of the delivery, due now, whatever its status."""
    if refused := _check_id(delivery_id, "deliveryId"):
        return None, refused.errors
    found = _endpoint_id(delivery_id)
    delivery = None
    if found is not None:
        async with database.write_transaction() as conn:
            delivery = await repo.webhooks.redeliver(conn, organization_id, found)
    if delivery is None:
        error = _invalid(
            "Your organization has no webhook delivery with this ID.",
            "deliveryId",
            ErrorCode.WEBHOOK_DELIVERY_NOT_FOUND,
        )
        return None, (error,)
    return delivery, ()
