"""The ``atlas-budget`` command line: one module per front of the tool, all registered on :data:`main`.

``atlas_budget_plugin.cli:main`` is the console script; importing this package registers every command.
"""

from ..atlas_import import import_atlas_command
from . import admin, alerts, demo, policies, reports, scopes, ui
from .core import (
    CliError,
    Session,
    console,
    main,
    mask_env,
    mask_url,
    mask_value,
)

__all__ = [
    "CliError",
    "Session",
    "admin",
    "alerts",
    "console",
    "demo",
    "main",
    "mask_env",
    "mask_url",
    "mask_value",
    "policies",
    "reports",
    "scopes",
    "ui",
]

main.add_command(import_atlas_command)  # atlas-budget import-atlas, defined with the importer it drives
