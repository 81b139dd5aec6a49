"""Install the built packages into a fresh virtualenv and use them exactly as ATLAS would."""

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
EXAMPLE_SINK = ROOT / "examples" / "atlas-budget-sink-jsonl"

HOST = textwrap.dedent(
    """
    import json, sys, uuid
    from datetime import datetime, timezone
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
    pm.hook.on_period_tick(now=datetime.now(timezone.utc))  # the host's scheduler: alerts are evaluated here
    print(json.dumps({"plugins": names, "allowed": allowed, "denied_by": verdict.source if verdict else None,
                      "reason": verdict.reason if verdict else None}))
    """
)

SETTINGS = """
database_url = "sqlite:///{db}"
evaluation_interval = 0

[[policies]]
name = "alice-daily"
scope = {{ actor = "alice" }}
period = "day"
limit = "0.0030"

[[alerts]]
policy = "alice-daily"
threshold = 80
sinks = ["jsonl"]

[sinks.jsonl]
path = "{alerts}"

[prices."local/llama-3-8b"]
input = "0.10"
output = "0.20"
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the budget plugin and the example sink installed from built wheels."""
    folder = tmp_path_factory.mktemp("install")
    wheels = folder / "wheels"
    for project in (ROOT, EXAMPLE_SINK):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(project)],
            check=True,
            cwd=folder,
        )
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheel_files = sorted(str(w) for w in wheels.glob("*.whl"))
    assert len(wheel_files) == 2, wheel_files
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *wheel_files], check=True)
    return venv


def test_host_finds_plugin_through_entry_point_and_sink_receives_alert(venv: Path, tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    config = tmp_path / "budget.toml"
    config.write_text(SETTINGS.format(db=tmp_path / "budget.db", alerts=alerts))
    host = tmp_path / "host.py"
    host.write_text(HOST)
    assert "atlas_budget_plugin" not in HOST  # the host only knows the contract
    env = {**os.environ, "ATLAS_BUDGET_CONFIG": str(config), "HOME": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [str(venv / "bin" / "python"), str(host)], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plugins"] == ["budget"]
    # Each call costs 1000 * 0.10/M + 1000 * 0.20/M = 0.0003; the limit 0.0030 allows exactly 10.
    assert result["allowed"] == 10
    assert result["denied_by"] == "atlas-budget" and "alice-daily" in result["reason"]
    (line,) = alerts.read_text().splitlines()
    alert = json.loads(line)
    assert alert["policy"] == "alice-daily" and alert["threshold"] == 80 and alert["spent"] == "0.003"


def test_cli_lists_installed_sinks(venv: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    cli = subprocess.run(
        [str(venv / "bin" / "atlas-budget"), "plugins"], check=True, capture_output=True, text=True, env=env
    )
    for name in ("log", "webhook", "apprise", "jsonl"):
        assert name in cli.stdout
