"""The budget console: a web UI and a versioned JSON API over the three services (``atlas-budget ui``).

Needs the ``ui`` extra: ``pip install 'atlas-budget-plugin[ui]'``.
"""

from __future__ import annotations

from .app import create_app
from .auth import Logins

__all__ = ["Logins", "create_app"]
