"""API keys and the principals they stand for.

A key is shown once, at creation; the database keeps only its SHA-256 digest (the keys are
256-bit random, so a plain digest cannot be reversed or guessed) and a short prefix for listings.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gql_wallet import repository as repo
from gql_wallet.db import read_transaction, write_transaction

KEY_PREFIX = "gqlw_sk_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an organization's backend, through one of its API keys."""

    organization_id: uuid.UUID


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(engine: AsyncEngine, token: str | None) -> Principal | None:
    if not token or not token.startswith(KEY_PREFIX) or len(token) > 200:
        return None
    async with read_transaction(engine) as conn:
        organization_id = await repo.find_active_key_organization(conn, hash_key(token))
    return Principal(organization_id) if organization_id else None


async def create_api_key(engine: AsyncEngine, organization: str) -> str:
    """Create the organization if needed and a new key for it; returns the secret."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    async with write_transaction(engine) as conn:
        now = repo.now_utc()
        organization_id = await repo.get_or_create_organization(conn, organization, now)
        await repo.insert_api_key(conn, organization_id, secret[:12], hash_key(secret), now)
    return secret
