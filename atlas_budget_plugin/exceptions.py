"""Errors raised by the budget services; each message names what was wrong and the fix."""

from __future__ import annotations

import pydantic


class BudgetError(Exception):
    """Base class of every error this package raises on purpose."""


class SettingsError(BudgetError):
    """The settings (file, environment or arguments) are invalid."""


class ValidationError(BudgetError, ValueError):
    """A value passed to a service is invalid."""

    @classmethod
    def from_pydantic(cls, exc: pydantic.ValidationError, what: str) -> ValidationError:
        """One message listing every invalid field of ``what`` (e.g. a policy) and why."""
        parts = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            # A whole-object check (empty location) already names its field in the message.
            parts.append(f"{key}: {message}" if key else message)
        return cls(f"invalid {what}: " + "; ".join(parts))


class NotFoundError(BudgetError, LookupError):
    """No such object in the actor's tenant (other tenants' objects are not found either)."""


class PermissionDenied(BudgetError, PermissionError):
    """The actor lacks the role the operation needs."""


class ConflictError(BudgetError):
    """The change conflicts with stored state (duplicate, or a stale version)."""


class UnknownPriceError(BudgetError, LookupError):
    """No price is known for a model; the message says how to add one."""


class StoreUnavailable(BudgetError):
    """The database cannot be reached."""
