"""BudgetPermissionChecker: roles (admin > write > read) and strict tenant isolation."""

from __future__ import annotations

from .exceptions import NotFoundError, PermissionDenied
from .types import Actor, Role

RANK: dict[str, int] = {"budget:read": 1, "budget:write": 2, "budget:admin": 3}


class BudgetPermissionChecker:
    """Decides what an actor may do.

    Every object belongs to one tenant. An actor only ever sees its own tenant:
    asking for another tenant's object is answered as if it did not exist, so
    nobody learns what another tenant has.
    """

    def level(self, actor: Actor) -> int:
        return max((RANK[r] for r in actor.roles), default=0)

    def require(self, actor: Actor, role: Role, tenant: str | None = None) -> None:
        """Raise unless ``actor`` holds ``role`` (or a higher one) in ``tenant`` (default: its own)."""
        if tenant is not None and tenant != actor.tenant:
            raise NotFoundError(f"tenant {tenant!r} has no such object for actor {actor.id!r}")
        if self.level(actor) < RANK[role]:
            held = ", ".join(sorted(actor.roles)) or "no budget role"
            raise PermissionDenied(
                f"actor {actor.id!r} needs role {role} in tenant {actor.tenant!r} (has {held}); "
                "ask a budget:admin of the tenant to grant it"
            )
