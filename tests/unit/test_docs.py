"""Meta-tests: every hook is documented with its exact signature, runnable, and tested; every command too."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest

import atlas_budget_plugin.hookspecs as budget_specs
import hookspecs.specs as host_specs
from atlas_budget_plugin.cli import main

ROOT = Path(__file__).resolve().parents[2]
HOOKS_DOC = (ROOT / "docs" / "hooks.md").read_text()
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
TESTS = {p: p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py"}


def hooks(module: ModuleType) -> dict[str, str]:
    """hook name -> its signature as written in the docs."""
    found = {}
    for name, fn in inspect.getmembers(module, inspect.isfunction):
        if hasattr(fn, f"{module.PROJECT}_spec"):
            found[name] = f"{name}{inspect.signature(fn)}".replace("'", "")
    return found


ALL_HOOKS = {**hooks(host_specs), **hooks(budget_specs)}


def test_there_are_seven_hooks() -> None:
    assert sorted(ALL_HOOKS) == sorted(
        [
            "pre_llm_call",
            "post_llm_call",
            "on_period_tick",
            "budget_configure",
            "budget_deliver_alert",
            "budget_event",
            "budget_price",
        ]
    )


@pytest.mark.parametrize("name", sorted(ALL_HOOKS))
def test_hook_documented_with_exact_signature(name: str) -> None:
    assert f"### `{ALL_HOOKS[name]}`" in HOOKS_DOC, f"docs/hooks.md needs a heading ### `{ALL_HOOKS[name]}`"


@pytest.mark.parametrize("name", sorted(ALL_HOOKS))
def test_hook_is_tested(name: str) -> None:
    used = [p for p, text in TESTS.items() if re.search(rf"\b{name}\b", text)]
    assert used, f"no test exercises the hook {name}"


EXAMPLES = re.findall(r"```python\n(.*?)```", HOOKS_DOC, re.S)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_hook_examples_run(index: int, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("ATLAS_BUDGET_")}
    result = subprocess.run(
        [sys.executable, "-c", EXAMPLES[index]], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        if isinstance(command, click.Group):
            found += commands(command, path)
        else:
            found.append(path)
    return found


COMMANDS = commands(main)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_documented(path: tuple[str, ...]) -> None:
    assert f"`atlas-budget {' '.join(path)}" in CLI_DOC, f"docs/cli.md does not document atlas-budget {' '.join(path)}"


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_command_tested(path: tuple[str, ...]) -> None:
    quoted = ", ".join(f'"{word}"' for word in path)
    assert any(quoted in text for text in TESTS.values()), f"no test invokes atlas-budget {' '.join(path)}"


def test_readme_settings_example_is_valid(tmp_path: Path) -> None:
    from atlas_budget_plugin.settings import BudgetSettings

    block = re.search(r"```toml\n(database_url.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md should show a full settings file starting with database_url"
    path = tmp_path / "budget.toml"
    path.write_text(block.group(1))
    settings = BudgetSettings.load(path)
    assert settings.policies[0].name == "alice-monthly" and settings.roles == {"alice": "budget:read"}
