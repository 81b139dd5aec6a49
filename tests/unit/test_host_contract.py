"""The hookspecs package: value types, the guarded-call helper and the plugin loader."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pluggy
import pytest

import hookspecs
from hookspecs import (
    CallBlocked,
    LLMCall,
    LLMUsage,
    PluginLoadError,
    Verdict,
    guarded_call,
    hookimpl,
    load_entry_points,
    load_plugins,
    run_guarded,
)
from hookspecs import specs as host_specs


def call(**kw: Any) -> LLMCall:
    return LLMCall(**{"call_id": "c1", "provider": "openai", "model": "gpt-4o", **kw})


# -- types ------------------------------------------------------------------------------------


def test_call_defaults_and_money_coercion() -> None:
    c = call(estimated_cost="0.10", tags={"team": "x"})
    assert c.tenant == "default" and c.operation == "chat"
    assert c.estimated_cost == Decimal("0.10")
    with pytest.raises(AttributeError):
        c.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"estimated_cost": 0.1}, TypeError, "floats cannot hold money exactly"),
        ({"estimated_cost": "-1"}, ValueError, "must not be negative"),
        ({"estimated_cost": "abc"}, ValueError, "must be a decimal number"),
        ({"estimated_cost": "NaN"}, ValueError, "finite"),
        ({"estimated_cost": [1]}, TypeError, "must be a Decimal"),
        ({"call_id": ""}, ValueError, "call_id must be a non-empty string"),
        ({"input_tokens": -1}, ValueError, "input_tokens must not be negative"),
        ({"max_output_tokens": 1.5}, TypeError, "whole number"),
        ({"tags": {"a": 1}}, TypeError, "tags must map str to str"),
    ],
)
def test_call_rejects_bad_input(kwargs: dict[str, Any], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        call(**kwargs)


def test_usage_validation() -> None:
    assert LLMUsage().is_empty
    assert not LLMUsage(cost=Decimal("0.01")).is_empty
    with pytest.raises(ValueError, match="cannot exceed input_tokens"):
        LLMUsage(input_tokens=10, cache_read_tokens=8, cache_write_tokens=5)
    with pytest.raises(ValueError, match="output_tokens must not be negative"):
        LLMUsage(output_tokens=-3)
    with pytest.raises(TypeError, match="floats"):
        LLMUsage(cost=0.5)  # type: ignore[arg-type]


def test_verdict_helpers() -> None:
    allow = Verdict.allow("x", warnings=["w"], spent=Decimal(1))
    assert allow.allowed and allow.warnings == ("w",) and allow.details == {"spent": Decimal(1)}
    deny = Verdict.deny("over", "x")
    assert not deny.allowed and str(CallBlocked(deny)) == "over"


# -- guarded_call -----------------------------------------------------------------------------


class Recorder:
    def __init__(self, verdict: Verdict | None = None) -> None:
        self.verdict = verdict
        self.posts: list[tuple[LLMUsage, BaseException | None]] = []

    @hookimpl
    def pre_llm_call(self, call: LLMCall) -> Verdict | None:
        return self.verdict

    @hookimpl
    def post_llm_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
        self.posts.append((usage, error))


def host_with(*plugins: Any) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("atlas")
    pm.add_hookspecs(host_specs)
    for p in plugins:
        pm.register(p)
    return pm


def test_guard_posts_once_on_success() -> None:
    rec = Recorder(Verdict.allow("r", warnings=["careful"]))
    with guarded_call(host_with(rec, Recorder()), call()) as guard:
        guard.usage = LLMUsage(input_tokens=5)
    assert guard.warnings == ["careful"]
    assert rec.posts == [(LLMUsage(input_tokens=5), None)]


def test_guard_posts_once_when_call_raises_and_reraises() -> None:
    rec = Recorder()
    with pytest.raises(RuntimeError, match="provider down"), guarded_call(host_with(rec), call()):
        raise RuntimeError("provider down")
    assert len(rec.posts) == 1
    usage, error = rec.posts[0]
    assert usage.is_empty and isinstance(error, RuntimeError)


def test_guard_posts_once_on_keyboard_interrupt_with_partial_usage() -> None:
    rec = Recorder()
    with pytest.raises(KeyboardInterrupt), guarded_call(host_with(rec), call()) as guard:
        guard.usage = LLMUsage(input_tokens=3, output_tokens=1)
        raise KeyboardInterrupt
    assert [(u.output_tokens, type(e)) for u, e in rec.posts] == [(1, KeyboardInterrupt)]


def test_guard_blocks_on_first_denial_and_lets_others_release() -> None:
    allower, denier = Recorder(Verdict.allow("a")), Recorder(Verdict.deny("too much", "d"))
    ran = []
    with pytest.raises(CallBlocked) as info, guarded_call(host_with(allower, denier), call()):
        ran.append(True)
    assert not ran
    assert info.value.verdict.reason == "too much"
    assert [type(e) for _, e in allower.posts] == [CallBlocked]


def test_guard_when_pre_hook_raises_posts_the_error() -> None:
    class Broken(Recorder):
        @hookimpl
        def pre_llm_call(self, call: LLMCall) -> Verdict | None:
            raise OSError("boom")

    rec = Recorder()
    with pytest.raises(OSError, match="boom"), guarded_call(host_with(rec, Broken()), call()):
        pass
    assert [type(e) for _, e in rec.posts] == [OSError]


def test_guard_logs_a_failing_post_hook_without_masking_the_call_error(caplog: pytest.LogCaptureFixture) -> None:
    class BadPost(Recorder):
        @hookimpl
        def post_llm_call(self, call: LLMCall, usage: LLMUsage, error: BaseException | None) -> None:
            raise ValueError("post failed")

    with pytest.raises(RuntimeError, match="original"), guarded_call(host_with(BadPost()), call()):
        raise RuntimeError("original")
    assert "post_llm_call of plugin" in caplog.text and "failed" in caplog.text


def test_run_guarded_reports_usage_of_result() -> None:
    rec = Recorder()
    result = run_guarded(host_with(rec), call(), lambda: {"tokens": 7}, lambda r: LLMUsage(input_tokens=r["tokens"]))
    assert result == {"tokens": 7}
    assert rec.posts == [(LLMUsage(input_tokens=7), None)]


# -- loader -----------------------------------------------------------------------------------


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[importlib.metadata.EntryPoint]:
    (tmp_path / "good_plugin.py").write_text(
        textwrap.dedent(
            """
            from hookspecs import hookimpl, Verdict

            @hookimpl
            def pre_llm_call(call):
                return Verdict.deny("good plugin says no", "good")
            """
        )
    )
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    (tmp_path / "badspec_plugin.py").write_text(
        "from hookspecs import hookimpl\n@hookimpl\ndef pre_llm_call(call, extra):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("good_plugin", "broken_plugin", "badspec_plugin"):
        sys.modules.pop(mod, None)
    eps = [
        importlib.metadata.EntryPoint("good", "good_plugin", "atlas"),
        importlib.metadata.EntryPoint("broken", "broken_plugin", "atlas"),
        importlib.metadata.EntryPoint("badspec", "badspec_plugin", "atlas"),
    ]
    monkeypatch.setattr(
        hookspecs.loader.importlib.metadata,
        "entry_points",
        lambda group=None: [ep for ep in eps if ep.group == group],
    )
    return eps


def test_loader_skips_broken_plugins_by_name(fake_plugins: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="hookspecs"):
        pm = load_plugins()
    assert hookspecs.plugin_names(pm) == ["good"]
    assert "skipping plugin 'broken'" in caplog.text and "missing dependency xyz" in caplog.text
    assert "skipping plugin 'badspec'" in caplog.text
    with pytest.raises(CallBlocked, match="good plugin says no"), guarded_call(pm, call()):
        pass


def test_loader_strict_mode_is_fatal(fake_plugins: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_PLUGINS_STRICT", "1")
    with pytest.raises(PluginLoadError, match="(?s)plugin 'badspec'.*Unset ATLAS_PLUGINS_STRICT"):
        load_plugins()


def test_loader_block_list(fake_plugins: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_PLUGINS_BLOCKED", "good, broken badspec")
    pm = load_plugins(strict=True)
    assert hookspecs.plugin_names(pm) == []


def test_load_entry_points_reports_failures(fake_plugins: Any) -> None:
    pm = host_with()
    failures = load_entry_points(pm, "atlas", strict=False, blocked={"good"})
    assert sorted(f.name for f in failures) == ["badspec", "broken"]
    assert pm.is_blocked("good")
