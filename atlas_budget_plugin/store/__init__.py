"""The budget store: peewee models, the database chosen by URL, and the ledger."""

from .database import initialize, open_database, schema_version, write_transaction
from .ledger import Ledger, Settlement, Standing, Target, aware, naive
from .models import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Ledger",
    "Settlement",
    "Standing",
    "Target",
    "aware",
    "initialize",
    "naive",
    "open_database",
    "schema_version",
    "write_transaction",
]
