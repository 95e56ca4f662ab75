"""gql_wallet: customer wallets over GraphQL, backed by an append-only ledger."""

__version__ = "0.1.0"
