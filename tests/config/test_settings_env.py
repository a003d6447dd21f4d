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


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FOUNDRY_RUNTIME__SHARDS": '{"taks": 4}'}, "FOUNDRY_RUNTIME"),
        ({"FOUNDRY_RUNTIME__SHARDS": '{"task": -3}'}, "FOUNDRY_RUNTIME"),
        ({"FOUNDRY_RUNTIME__DEFAULT_SHARDS": "0"}, "FOUNDRY_RUNTIME__DEFAULT_SHARDS"),
        ({"FOUNDRY_RUNTIME__IDLE_SECONDS": "-1"}, "FOUNDRY_RUNTIME__IDLE_SECONDS"),
        ({"FOUNDRY_RUNTIME__IDLE_SECONDS": "nan"}, "FOUNDRY_RUNTIME__IDLE_SECONDS"),
        ({"FOUNDRY_RUNTIME__OUTBOX_BACKOFF_BASE_S": "inf"}, "FOUNDRY_RUNTIME__OUTBOX_BACKOFF_BASE_S"),
        (
            {
                "FOUNDRY_RUNTIME__OUTBOX_BACKOFF_BASE_S": "100",
                "FOUNDRY_RUNTIME__OUTBOX_BACKOFF_CAP_S": "0.001",
            },
            "FOUNDRY_RUNTIME",
        ),
        ({"FOUNDRY_STRIPE__RETRY_BASE_S": "1000", "FOUNDRY_STRIPE__RETRY_CAP_S": "1"}, "FOUNDRY_STRIPE"),
        ({"FOUNDRY_STRIPE__TIMEOUT_S": "inf"}, "FOUNDRY_STRIPE__TIMEOUT_S"),
        ({"FOUNDRY_SANDBOX__HEALTH_TIMEOUT": "-1"}, "FOUNDRY_SANDBOX__HEALTH_TIMEOUT"),
        ({"FOUNDRY_SANDBOX__IDLE_MINUTES": "inf"}, "FOUNDRY_SANDBOX__IDLE_MINUTES"),
        ({"FOUNDRY_RUNTIME__OBJECT_STORE_BYTES": "1"}, "FOUNDRY_RUNTIME__OBJECT_STORE_BYTES"),
        ({"FOUNDRY_RUNTIME__NAMESPACE": ""}, "FOUNDRY_RUNTIME__NAMESPACE"),
        ({"FOUNDRY_GITHUB__APP_ID": "-5"}, "FOUNDRY_GITHUB__APP_ID"),
        ({"FOUNDRY_RUNTIME": '{"bogus": 1}'}, "FOUNDRY_RUNTIME"),
    ],
)
def test_a_value_no_deployment_could_mean_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value)
