"""Errors raised by the budget services; each message names what was wrong and the fix."""

from __future__ import annotations


class BudgetError(Exception):
    """Base class of every error this package raises on purpose."""


class SettingsError(BudgetError):
    """The settings (file, environment or arguments) are invalid."""


class ValidationError(BudgetError, ValueError):
    """A value passed to a service is invalid."""


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
