"""BudgetSettings: sources in order, and one clear error naming the file, key and fix."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from atlas_budget_plugin.exceptions import SettingsError
from atlas_budget_plugin.settings import BudgetSettings, default_config_file

GOOD = """
database_url = "sqlite:///~/budget.db"
default_enforcement = "warn"
reservation_ttl = 30

[[policies]]
name = "alice-monthly"
scope = { actor = "alice", "tag.env" = "prod" }
period = "month"
limit = "20.00"
thresholds = [100, 50, 80, 80]

[[alerts]]
policy = "alice-monthly"
threshold = 80
sinks = ["log"]

[sinks.webhook]
url = "http://127.0.0.1:8080/budget"

[prices."local/llama-3-8b"]
input = "0.10"
output = "0.20"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budget.toml"
    path.write_text(text)
    return path


def test_defaults_without_file(tmp_path: Path, isolated_env: Path) -> None:
    settings = BudgetSettings.load(tmp_path / "missing.toml")
    assert settings.default_enforcement == "block"
    assert settings.on_store_error == "deny"
    assert settings.evaluation_interval == 60 and settings.reservation_ttl == 600
    assert settings.database_url.endswith(os.path.join("atlas", "budget.db"))
    assert settings.database_url.startswith(f"sqlite:///{isolated_env}")
    assert settings.config_file == tmp_path / "missing.toml"


def test_file_is_read(tmp_path: Path) -> None:
    settings = BudgetSettings.load(write(tmp_path, GOOD))
    assert settings.default_enforcement == "warn"
    policy = settings.policies[0]
    assert policy.limit == Decimal("20.00") and policy.thresholds == [50, 80, 100]
    assert policy.scope.actor == "alice" and policy.scope.tags == {"env": "prod"}
    assert settings.alerts[0].sinks == ["log"]
    assert settings.sinks["webhook"]["url"].startswith("http://127.0.0.1")
    assert settings.prices["local/llama-3-8b"].output == Decimal("0.20")


def test_env_beats_file_and_arguments_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("ATLAS_BUDGET_RESERVATION_TTL", "45")
    monkeypatch.setenv("ATLAS_BUDGET_PRICES__local/x__INPUT", "1.5")
    assert BudgetSettings.load(path).reservation_ttl == 45
    assert BudgetSettings.load(path, reservation_ttl=5).reservation_ttl == 5


def test_config_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'on_store_error = "allow"\n')
    monkeypatch.setenv("ATLAS_BUDGET_CONFIG", str(path))
    assert default_config_file() == path
    assert BudgetSettings.load().on_store_error == "allow"
    assert BudgetSettings().on_store_error == "allow"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("limit = ", "is not valid TOML"),
        ("colour = 'red'\n", "unknown key 'colour' in settings file"),
        ('default_enforcement = "maybe"\n', "default_enforcement: Input should be 'block' or 'warn'"),
        ('[[policies]]\nname = "a"\nlimit = "-5"\n', "policies[0].limit: limit must be greater than 0"),
        ('[[policies]]\nname = "a"\nlimit = "5"\nperiod = "fortnight"\n', "unknown period 'fortnight'; allowed: hour"),
        ('[[policies]]\nname = "a"\nlimit = 0.1\n', "not a float"),
        ('[[policies]]\nname = "a"\nlimit = "1"\ntimezone = "Mars/Base"\n', "unknown timezone 'Mars/Base'"),
        ('[[policies]]\nname = "a"\nlimit = "1"\nscope = { planet = "x" }\n', "unknown scope key 'planet'"),
        ('[[policies]]\nname = "a"\nlimit = "1"\nperiod = "rolling:0h"\n', "must be at least 1h"),
        ('[[policies]]\nname = "a"\nlimit = "1"\n[[policies]]\nname = "a"\nlimit = "2"\n', "declared twice"),
        ('[[policies]]\nname = "a"\nlimit = "1"\nwobble = 1\n', "unknown key 'policies[0].wobble'"),
        ('unknown_model = "maybe"\n', "unknown_model must be 'block', 'allow_unpriced' or a default price"),
        ('[prices."x"]\ninput = "-1"\n', "prices must not be negative"),
        ('[[policies]]\nname = "a"\nlimit = "1.0000000001"\n', "more than 9 decimal places"),
    ],
)
def test_bad_file_gives_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        BudgetSettings.load(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "Traceback" not in message


def test_env_errors_name_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_BUDGET_EVALUATION_INTERVAL", "-1")
    with pytest.raises(
        SettingsError, match="evaluation_interval: .*environment variable ATLAS_BUDGET_EVALUATION_INTERVAL"
    ):
        BudgetSettings.load(tmp_path / "none.toml")


def test_argument_errors_name_arguments(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="reservation_ttl: .* in arguments"):
        BudgetSettings.load(tmp_path / "none.toml", reservation_ttl=0)


def test_unreadable_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(SettingsError, match="cannot be read"):
        BudgetSettings.load(folder)


def test_default_price_setting(tmp_path: Path) -> None:
    settings = BudgetSettings.load(tmp_path / "none.toml", unknown_model="2.50")
    assert settings.unknown_model_price == Decimal("2.50")
    assert BudgetSettings.load(tmp_path / "none.toml").unknown_model_price is None
