"""``python -m atlas_budget_plugin.cli``: the ``atlas-budget`` command."""

from . import main

main()
