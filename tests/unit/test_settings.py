"""BudgetSettings: sources in order, and one clear error naming the file, key and fix."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

import atlas_budget_plugin.settings as settings_module
from atlas_budget_plugin import bootstrap
from atlas_budget_plugin.exceptions import SettingsError
from atlas_budget_plugin.periods import MAX_ROLLING_HOURS, parse_period
from atlas_budget_plugin.plugin import BudgetPlugin
from atlas_budget_plugin.settings import BudgetSettings, default_config_file, unknown_env_variables
from hookspecs import LLMCall, LLMUsage

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
    settings = BudgetSettings.load()  # only the default location may be absent
    assert settings.default_enforcement == "block"
    assert settings.on_store_error == "deny"
    assert settings.evaluation_interval == 60 and settings.reservation_ttl == 600
    timeouts = (settings.store_connect_timeout, settings.store_statement_timeout, settings.store_lock_timeout)
    assert timeouts == (5, 10, 10)
    assert settings.durability == "full"
    assert settings.database_url.endswith(os.path.join("atlas", "budget.db"))
    assert settings.database_url.startswith(f"sqlite:///{isolated_env}")
    assert settings.config_file == default_config_file()
    assert not settings.config_file.exists()


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
        BudgetSettings.load()


def test_argument_errors_name_arguments(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="reservation_ttl: .* in arguments"):
        BudgetSettings.load(None, reservation_ttl=0)


def test_unreadable_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(SettingsError, match="cannot be read"):
        BudgetSettings.load(folder)


def test_default_price_setting(tmp_path: Path) -> None:
    settings = BudgetSettings.load(None, unknown_model="2.50")
    assert settings.unknown_model_price == Decimal("2.50")
    assert BudgetSettings.load().unknown_model_price is None


# --- Every settings fault is one SettingsError naming the source, the key and the fix (issue 11) ---


def test_named_file_that_does_not_exist_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    typo = tmp_path / "budegt.toml"
    monkeypatch.setenv("ATLAS_BUDGET_CONFIG", str(typo))
    with pytest.raises(SettingsError, match=f"settings file {typo} named by ATLAS_BUDGET_CONFIG does not exist"):
        BudgetSettings.load()
    monkeypatch.delenv("ATLAS_BUDGET_CONFIG")
    with pytest.raises(SettingsError, match=r"named by the config_file argument \(--config\) does not exist"):
        BudgetSettings.load(typo)
    typo.write_text("")
    assert BudgetSettings.load(typo).config_file == typo


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "budget.toml"
    path.write_bytes('evaluation_interval = 0\ntenant = "café"\n'.encode("latin-1"))
    with pytest.raises(SettingsError, match=f"settings file {path} is not UTF-8 text \\(byte 0xe9 on line 2\\)"):
        BudgetSettings.load(path)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ATLAS_BUDGET_ROLES", "alice=budget:read"),
        ("ATLAS_BUDGET_POLICIES", "[{name: a}]"),
        ("ATLAS_BUDGET_PRICES", "x"),
        ("ATLAS_BUDGET_SINKS", "{"),
    ],
)
def test_variable_that_is_not_json(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        BudgetSettings.load()
    message = str(info.value)
    assert f"environment variable {name} is not valid JSON" in message
    assert "ATLAS_BUDGET_ROLES__alice=budget:read" in message  # how to write it instead


def test_one_key_per_variable_with_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_BUDGET_ROLES__alice", "budget:read")
    assert BudgetSettings.load().roles == {"alice": "budget:read"}


BOUNDED = [
    ("evaluation_interval", "100000000000000", "between 0 and 86400 seconds"),
    ("evaluation_interval", "-1", "between 0 and 86400 seconds"),
    ("reservation_ttl", "1000000000", "between 1 and 604800 seconds"),
    ("reservation_ttl", "0", "between 1 and 604800 seconds"),
    ("default_max_output_tokens", "1000000000000", "between 0 and 1e+07 tokens"),
    ("default_input_tokens", "-5", "between 0 and 1e+07 tokens"),
    ("retention_days", "1000000000", "between 0 and 36500 days"),
    ("delivery_attempts", "51", "between 1 and 50 attempts"),
    ("delivery_backoff", "1e300", "between 0.001 and 86400 seconds"),
    ("delivery_backoff", "nan", "finite number"),
    ("delivery_backoff", "inf", "finite number"),
    ("store_connect_timeout", "0", "between 0.1 and 600 seconds"),
    ("store_statement_timeout", "100000", "between 0.1 and 3600 seconds"),
    ("store_lock_timeout", "-1", "between 0.1 and 3600 seconds"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BOUNDED)
def test_numbers_are_bounded_in_files(tmp_path: Path, key: str, value: str, allowed: str) -> None:
    path = write(tmp_path, f"{key} = {value}\n")
    with pytest.raises(SettingsError) as info:
        BudgetSettings.load(path)
    assert f"{key}: " in str(info.value) and allowed in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(("key", "value", "allowed"), BOUNDED)
def test_numbers_are_bounded_in_variables(monkeypatch: pytest.MonkeyPatch, key: str, value: str, allowed: str) -> None:
    monkeypatch.setenv(f"ATLAS_BUDGET_{key.upper()}", value)
    with pytest.raises(SettingsError) as info:
        BudgetSettings.load()
    assert allowed in str(info.value) and f"environment variable ATLAS_BUDGET_{key.upper()}" in str(info.value)


def test_bounds_are_inclusive(tmp_path: Path) -> None:
    settings = BudgetSettings.load(
        None,
        evaluation_interval=86_400,
        reservation_ttl=7 * 86_400,
        retention_days=36_500,
        default_max_output_tokens=10_000_000,
        store_connect_timeout=0.1,
        store_statement_timeout=3_600,
        durability="normal",
    )
    assert settings.retention_days == 36_500 and settings.durability == "normal"
    with pytest.raises(SettingsError, match="durability: Input should be 'full' or 'normal'"):
        BudgetSettings.load(None, durability="off")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[policies]]\nname = "a"\nlimit = "1"\nperiod = "rolling:100000000h"\n', "is too long"),
        ('[[policies]]\nname = "a"\nlimit = "1"\nperiod = "rolling:3651d"\n', "is too long"),
        ('unknown_model = "-1.00"\n', "unknown_model is a price and must not be negative"),
        ('unknown_model = "1e12"\n', "unknown_model must be 'block', 'allow_unpriced' or a default price"),
        ('[prices."x"]\ninput = "1e12"\n', "too large; amounts must stay below 1,000,000,000"),
        ('[prices."x"]\noutput = "NaN"\n', "must be a finite amount"),
        ('[prices."x"]\nper_unit = { image = "-0.5" }\n', "must not be negative"),
    ],
)
def test_periods_and_prices_are_bounded(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError, match=re.escape(expected)):
        BudgetSettings.load(path)


def test_rolling_windows_are_bounded() -> None:
    assert parse_period("rolling:3650d").hours == MAX_ROLLING_HOURS == 87_600
    for text in ("rolling:3651d", "rolling:87601h", "rolling:" + "9" * 5000 + "h"):
        with pytest.raises(ValueError, match="is too long: it must be between 1h and 87600h"):
            parse_period(text)


def test_unknown_variables_are_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_BUDGET_RESERVATIONTTL", "5")
    monkeypatch.setenv("ATLAS_BUDGET_ON_STORE_EROR", "allow")
    monkeypatch.setenv("ATLAS_BUDGET_XYZZY", "1")
    monkeypatch.setenv("ATLAS_BUDGET_PRICES__local/x__INPUT", "1.5")  # nested keys of a real setting
    monkeypatch.setenv("ATLAS_BUDGET_CONFIG", "")  # the file variable itself
    problems = unknown_env_variables()
    assert problems == [
        "ATLAS_BUDGET_ON_STORE_EROR matches no setting and is ignored; did you mean ATLAS_BUDGET_ON_STORE_ERROR?",
        "ATLAS_BUDGET_RESERVATIONTTL matches no setting and is ignored; did you mean ATLAS_BUDGET_RESERVATION_TTL?",
        "ATLAS_BUDGET_XYZZY matches no setting and is ignored",
    ]
    warned: list[str] = []
    monkeypatch.setattr(settings_module, "_warned", set())  # other tests in this process may have warned already
    monkeypatch.setattr(settings_module.log, "warning", lambda fmt, *args: warned.append(fmt % args))
    BudgetSettings.load()
    BudgetSettings.load()
    assert sum("ATLAS_BUDGET_RESERVATIONTTL matches no setting" in line for line in warned) == 1
    assert unknown_env_variables({"ATLAS_BUDGET_SINKS__WEBHOOK__URL": "x", "HOME": "/"}) == []


def test_durability_and_lock_timeout_reach_sqlite(make_services: Any, tmp_path: Path) -> None:
    services = make_services(database_url=f"sqlite:///{tmp_path}/d.db", durability="normal", store_lock_timeout=2.5)
    assert services.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert services.db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 2500
    full = make_services(database_url=f"sqlite:///{tmp_path}/e.db")
    assert full.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize(
    ("url", "extra"), [("postgresql://u@127.0.0.1/db", "postgres"), ("mysql://u@127.0.0.1/db", "mysql")]
)
def test_server_url_without_its_driver(monkeypatch: pytest.MonkeyPatch, url: str, extra: str) -> None:
    monkeypatch.setattr(pw, "psycopg2", None)
    monkeypatch.setattr(pw, "psycopg", None, raising=False)
    monkeypatch.setattr(pw, "mysql", None)
    with pytest.raises(SettingsError, match=re.escape(f"pip install 'atlas-budget-plugin[{extra}]'")):
        bootstrap(BudgetSettings.load(None, database_url=url))


def test_sqlite_url_naming_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    with pytest.raises(SettingsError, match=f"database_url names {passwd}, which is not a budget database"):
        bootstrap(BudgetSettings.load(None, database_url=f"sqlite:///{passwd}"))
    assert passwd.read_text().startswith("root:x:0:0")  # left as it was


# --- Inside the host: a settings fault denies every call with the reason, never raises, and heals ---


def _latin1(m: pytest.MonkeyPatch, config: Path) -> str:
    config.write_bytes('tenant = "café"\n'.encode("latin-1"))
    return "is not UTF-8 text"


def _roles_not_json(m: pytest.MonkeyPatch, config: Path) -> str:
    m.setenv("ATLAS_BUDGET_ROLES", "alice=budget:read")
    return "environment variable ATLAS_BUDGET_ROLES is not valid JSON"


def _huge_interval(m: pytest.MonkeyPatch, config: Path) -> str:
    m.setenv("ATLAS_BUDGET_EVALUATION_INTERVAL", "100000000000000")
    return "evaluation_interval: must be between 0 and 86400 seconds"


def _huge_ttl(m: pytest.MonkeyPatch, config: Path) -> str:
    config.write_text("reservation_ttl = 100000000000000000\n")
    return "reservation_ttl: must be between 1 and 604800 seconds"


def _huge_retention(m: pytest.MonkeyPatch, config: Path) -> str:
    config.write_text("retention_days = 1000000000\n")
    return "retention_days: must be between 0 and 36500 days"


def _huge_rolling(m: pytest.MonkeyPatch, config: Path) -> str:
    config.write_text('[[policies]]\nname = "a"\nlimit = "1"\nperiod = "rolling:100000000h"\n')
    return "rolling window 'rolling:100000000h' is too long"


def _negative_price(m: pytest.MonkeyPatch, config: Path) -> str:
    config.write_text('unknown_model = "-1.00"\n')
    return "unknown_model is a price and must not be negative"


def _not_a_database(m: pytest.MonkeyPatch, config: Path) -> str:
    passwd = config.parent / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    m.setenv("ATLAS_BUDGET_DATABASE_URL", f"sqlite:///{passwd}")
    return f"database_url names {passwd}, which is not a budget database"


def _no_driver(m: pytest.MonkeyPatch, config: Path) -> str:
    m.setattr(pw, "psycopg2", None)
    m.setattr(pw, "psycopg", None, raising=False)
    m.setenv("ATLAS_BUDGET_DATABASE_URL", "postgresql://u@127.0.0.1:5432/budget")
    return "pip install 'atlas-budget-plugin[postgres]'"


def _missing_file(m: pytest.MonkeyPatch, config: Path) -> str:
    m.setenv("ATLAS_BUDGET_CONFIG", str(config.parent / "budegt.toml"))
    return "budegt.toml named by ATLAS_BUDGET_CONFIG does not exist"


@pytest.mark.parametrize(
    "fault",
    [
        _latin1,
        _roles_not_json,
        _huge_interval,
        _huge_ttl,
        _huge_retention,
        _huge_rolling,
        _negative_price,
        _not_a_database,
        _no_driver,
        _missing_file,
    ],
)
def test_plugin_denies_with_the_reason_and_recovers(
    fault: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "budget.toml"
    good = "evaluation_interval = 0\n"
    config.write_text(good)
    monkeypatch.setenv("ATLAS_BUDGET_CONFIG", str(config))
    monkeypatch.setenv("ATLAS_BUDGET_DATABASE_URL", f"sqlite:///{tmp_path}/b.db")
    plugin = BudgetPlugin(lambda: bootstrap(require_store=False))
    call = LLMCall(call_id="c1", provider="openai", model="gpt-4o", estimated_cost=Decimal("0.01"))
    with monkeypatch.context() as m:
        expected = fault(m, config)
        verdict = plugin.pre_llm_call(call)
        assert verdict is not None and not verdict.allowed
        assert verdict.reason.startswith("the budget plugin is misconfigured: ")
        assert expected in verdict.reason
        plugin.post_llm_call(call, LLMUsage(input_tokens=1, output_tokens=1), None)  # nothing raised
        plugin.on_period_tick(datetime.now(timezone.utc))
    config.write_text(good)  # fixed (the variables and the driver are back as they were)
    plugin._config_checked -= 10  # as if 10 s had passed
    try:
        verdict = plugin.pre_llm_call(LLMCall(call_id="c2", provider="openai", model="gpt-4o"))
        assert verdict is None or verdict.allowed
    finally:
        plugin.close()
        plugin.services.close()
