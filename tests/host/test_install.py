"""Install the built package into a fresh virtualenv and use it exactly as ATLAS would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

HOST = textwrap.dedent(
    """
    import json, sys, uuid
    from hookspecs import CallBlocked, LLMCall, LLMUsage, guarded_call, load_plugins

    pm = load_plugins()
    names = [name for name, plugin in pm.list_name_plugin() if plugin is not None]
    allowed, verdict = 0, None
    for i in range(100):
        call = LLMCall(call_id=str(uuid.uuid4()), provider="local", model="llama-3-8b", actor="alice",
                       input_tokens=1000, max_output_tokens=1000)
        try:
            with guarded_call(pm, call) as guard:
                guard.usage = LLMUsage(input_tokens=1000, output_tokens=1000)
        except CallBlocked as blocked:
            verdict = blocked.verdict
            break
        allowed += 1
    print(json.dumps({"plugins": names, "allowed": allowed, "allowed_by": verdict.source if verdict else None,
                      "reason": verdict.reason if verdict else None}))
    """
)

SETTINGS = """
database_url = "sqlite:///{db}"

[[policies]]
name = "alice-daily"
scope = {{ actor = "alice" }}
period = "day"
limit = "0.0030"

[prices."local/llama-3-8b"]
input = "0.10"
output = "0.20"
"""


def test_installed_package_is_found_through_entry_point(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("atlas_budget_plugin-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)

    config = tmp_path / "budget.toml"
    config.write_text(SETTINGS.format(db=tmp_path / "budget.db"))
    host = tmp_path / "host.py"
    host.write_text(HOST)
    assert "atlas_budget_plugin" not in HOST  # the host only knows the contract
    env = {**os.environ, "ATLAS_BUDGET_CONFIG": str(config), "HOME": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(python), str(host)], check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plugins"] == ["budget"]
    # Each call costs 1000 * 0.10/M + 1000 * 0.20/M = 0.0003; the limit 0.0030 allows exactly 10.
    assert result["allowed"] == 10
    assert result["allowed_by"] == "atlas-budget"
    assert "alice-daily" in result["reason"]
    cli = subprocess.run(
        [str(venv / "bin" / "atlas-budget"), "plugins"], check=True, capture_output=True, text=True, env=env
    )
    assert "log" in cli.stdout
