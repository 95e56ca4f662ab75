"""The package logger."""

import logging

logger = logging.getLogger("gql_wallet")
