"""The budget store: peewee models, the database chosen by URL, and the ledger."""

from .database import initialize, open_database, schema_version, write_transaction
from .ledger import (
    Ledger,
    Rate,
    Reservation,
    Reserved,
    Settlement,
    Standing,
    StoreRangeError,
    Target,
    aware,
    naive,
    target_for,
)
from .models import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Ledger",
    "Rate",
    "Reservation",
    "Reserved",
    "Settlement",
    "Standing",
    "StoreRangeError",
    "Target",
    "aware",
    "initialize",
    "naive",
    "open_database",
    "schema_version",
    "target_for",
    "write_transaction",
]
