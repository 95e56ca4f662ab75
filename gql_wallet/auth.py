"""Tokens and the principals they stand for.

Two kinds of bearer token, told apart by their prefix:
- `gqlw_sk_...`: an organization API key with scopes (wallets:read, wallets:write);
- `gqlw_cs_...`: a customer session token, made by an organization for one customer, short-lived,
  read-only and limited to that customer's wallets.

A token is `<prefix><public id>_<secret><checksum>`. The checksum (CRC32 of the rest) lets us
refuse a mistyped or made-up token without touching the database; the public id finds the row;
the database keeps only HMAC-SHA256(server secret, token), compared in constant time. A stolen
database therefore yields no usable token, and neither does a stolen token hash without the secret.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from gql_wallet import repository as repo
from gql_wallet.db import Database

API_KEY_PREFIX = "gqlw_sk_"
SESSION_PREFIX = "gqlw_cs_"
SCOPE_READ = "wallets:read"
SCOPE_WRITE = "wallets:write"
SCOPES = (SCOPE_READ, SCOPE_WRITE)

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PUBLIC_ID_LENGTH = 12
_SECRET_LENGTH = 32  # about 190 bits
_CHECKSUM_LENGTH = 6
_TOKEN = re.compile(
    rf"^(gqlw_sk_|gqlw_cs_)([0-9A-Za-z]{{{_PUBLIC_ID_LENGTH}}})_"
    rf"([0-9A-Za-z]{{{_SECRET_LENGTH}}})([0-9A-Za-z]{{{_CHECKSUM_LENGTH}}})$"
)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may see and do."""

    organization_id: uuid.UUID
    token_id: uuid.UUID  # the API key or customer session; rate limits are kept per token
    scopes: frozenset[str]
    customer_id: str | None = None  # set for a customer session: everything is limited to it

    @property
    def kind(self) -> str:
        return "customer_session" if self.customer_id is not None else "api_key"

    def can(self, scope: str) -> bool:
        return scope in self.scopes


# Who a WebSocket is until its connection_init authenticates it: no organization, no scope, and a
# customer id no real customer can have (control characters are refused), so it sees nothing.
NOBODY = Principal(uuid.UUID(int=0), uuid.UUID(int=0), frozenset(), customer_id="\x00")


def _base62(number: int, length: int) -> str:
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh token and its public id."""
    public_id = _random(_PUBLIC_ID_LENGTH)
    body = f"{prefix}{public_id}_{_random(_SECRET_LENGTH)}"
    return body + _checksum(body), public_id


def parse_token(token: str) -> tuple[str, str] | None:
    """(prefix, public id) of a well-formed token with a valid checksum, else None."""
    match = _TOKEN.match(token)
    if match is None:
        return None
    prefix, public_id, secret, checksum = match.groups()
    if not hmac.compare_digest(_checksum(f"{prefix}{public_id}_{secret}"), checksum):
        return None
    return prefix, public_id


def token_hash(secret_key: bytes, token: str) -> str:
    return hmac.new(secret_key, token.encode(), hashlib.sha256).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# Tokens whose parse and hash an Authenticator remembers (each entry: a few hundred bytes).
_TOKEN_CACHE_SIZE = 1024


class Authenticator:
    """Turns a bearer token into a Principal, or None for anything not currently valid.

    The token's parse (regex and checksum) and its HMAC are pure functions of the token, so
    they are remembered for the most recent tokens: a client sends the same token with every
    request, and the two were about 3% of a lookup's CPU. Whether the token is valid is never
    remembered: every request reads the key or session row and compares the stored hash, so a
    revocation or an expiry counts from the next request on.
    """

    def __init__(self, database: Database, secret_key: bytes) -> None:
        self.database = database
        self.secret_key = secret_key
        self._parse = functools.lru_cache(maxsize=_TOKEN_CACHE_SIZE)(parse_token)
        self._hash = functools.lru_cache(maxsize=_TOKEN_CACHE_SIZE)(
            functools.partial(token_hash, secret_key)
        )

    async def authenticate(self, token: str | None, now: datetime) -> Principal | None:
        parsed = self._parse(token) if token else None
        if parsed is None or token is None:
            return None
        prefix, public_id = parsed
        if prefix == API_KEY_PREFIX:
            key = await repo.find_api_key(self.database, public_id)
            if key is None or key.revoked_at is not None:
                return None
            stored = key.token_hash
            principal = Principal(key.organization_id, key.id, frozenset(key.scopes.split()))
        else:
            session = await repo.find_customer_session(self.database, public_id)
            if session is None or not session.active(now):
                return None
            stored = session.token_hash
            principal = Principal(
                session.organization_id,
                session.id,
                frozenset({SCOPE_READ}),
                customer_id=session.customer_id,
            )
        expected = self._hash(token)
        return principal if hmac.compare_digest(stored, expected) else None


async def create_api_key(
    database: Database, secret_key: bytes, organization: str, scopes: tuple[str, ...] = SCOPES
) -> str:
    """Create the organization if needed and a new key for it; returns the token (shown once)."""
    token, public_id = new_token(API_KEY_PREFIX)
    async with database.write_transaction() as conn:
        now = repo.now_utc()
        organization_id = await repo.get_or_create_organization(conn, organization, now)
        await repo.insert_api_key(
            conn,
            organization_id=organization_id,
            public_id=public_id,
            token_hash=token_hash(secret_key, token),
            scopes=" ".join(sorted(set(scopes))),
            now=now,
        )
    return token


async def revoke_api_key(database: Database, public_id: str) -> repo.ApiKeyRecord | None:
    """The key as it was before; revoked now (and so every customer session it made) unless it
    was already. None if there is no such key."""
    async with database.write_transaction() as conn:
        found = [key for key in await repo.list_api_keys(conn) if key.public_id == public_id]
        if found and found[0].revoked_at is None:
            await repo.revoke_api_key(conn, public_id, repo.now_utc())
        return found[0] if found else None


async def create_customer_session(
    database: Database,
    secret_key: bytes,
    principal: Principal,
    customer_id: str,
    lifetime: timedelta,
) -> tuple[str, repo.CustomerSessionRecord]:
    token, public_id = new_token(SESSION_PREFIX)
    now = repo.now_utc()
    async with database.write_transaction() as conn:
        session = await repo.insert_customer_session(
            conn,
            organization_id=principal.organization_id,
            api_key_id=principal.token_id,
            customer_id=customer_id,
            public_id=public_id,
            token_hash=token_hash(secret_key, token),
            now=now,
            expires_at=now + lifetime,
        )
    return token, session


async def revoke_customer_session(
    database: Database, principal: Principal, session_id: uuid.UUID
) -> repo.CustomerSessionRecord | None:
    """End one of the principal's organization's sessions; None if it has no such session."""
    async with database.write_transaction() as conn:
        return await repo.revoke_customer_session(
            conn, principal.organization_id, session_id, repo.now_utc()
        )
