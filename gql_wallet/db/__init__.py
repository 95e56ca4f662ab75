"""The database layer: engines per dialect (engines.py), connections (connections.py), the
SQLite writer thread and reader (sqlite.py), PostgreSQL group commit (groups.py), and the one
`Database` object that holds them (database.py)."""

from gql_wallet.db.connections import DriverConnection, OnDemandConnection, checked_out
from gql_wallet.db.database import Database, create_database
from gql_wallet.db.engines import async_url, asyncpg_dsn
from gql_wallet.db.sqlite import SqliteReader

__all__ = [
    "Database",
    "DriverConnection",
    "OnDemandConnection",
    "SqliteReader",
    "async_url",
    "asyncpg_dsn",
    "checked_out",
    "create_database",
]
