"""The settings' own checks of the environment, in process (the command line runs the same code)."""

from __future__ import annotations

import pytest

from foundry.config import ConfigError, load_settings


def test_a_key_of_a_dict_setting_and_foundrys_own_child_variables_are_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOUNDRY_RUNTIME__SHARDS__TASK", "3")
    monkeypatch.setenv("FOUNDRY_SERVE_SUPERVISED", "1")  # set by `foundry serve` for its child
    monkeypatch.setenv("FOUNDRY_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.runtime.shards == {"task": 3}
    assert settings.log_level == "DEBUG"


def test_a_bad_value_inside_a_secret_setting_is_named_but_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_STRIPE__WEBHOOK_SECRETS", '["whsec_ok", 987654321]')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "FOUNDRY_STRIPE__WEBHOOK_SECRETS" in str(caught.value)
    assert "987654321" not in str(caught.value)


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_PORTT", "1")
    monkeypatch.setenv("FOUNDRY_AUTH__EXTRA_ORIGINS", "https://a.example")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown setting FOUNDRY_PORTT" in message
    assert "FOUNDRY_AUTH__EXTRA_ORIGINS must be a JSON list" in message
