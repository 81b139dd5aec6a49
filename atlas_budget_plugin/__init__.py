"""atlas-budget-plugin: budget policies, exact usage tracking and alerts for ATLAS LLM calls."""

from importlib.metadata import PackageNotFoundError, version

from .bootstrap import BudgetServices, bootstrap
from .settings import BudgetSettings

try:
    __version__ = version("atlas-budget-plugin")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["BudgetServices", "BudgetSettings", "__version__", "bootstrap"]
