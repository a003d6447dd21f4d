"""Host processes get their settings from Ray's actor arguments, which anything that talks to the
cluster can read back: no secret may be in them, however the setting holds it."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import SecretStr

from foundry.config import Settings
from foundry.runtime.host_settings import host_settings, public_settings, secret_digests, write_secrets


def _settings(tmp_path: Path, **stripe: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        secret_key=SecretStr("k" * 48),
        metrics_token=SecretStr("metrics-token-value"),
        stripe={"secret_key": SecretStr("sk_test_value"), **stripe},
    )


def test_no_secret_is_in_the_actor_arguments_and_every_one_reaches_the_host(tmp_path: Path) -> None:
    settings = _settings(tmp_path, webhook_secrets=[SecretStr("whsec_old"), SecretStr("whsec_new")])
    public = json.dumps(public_settings(settings), default=repr)
    for value in ("k" * 48, "metrics-token-value", "sk_test_value", "whsec_old", "whsec_new"):
        assert value not in public
    write_secrets(settings)
    on_host = host_settings(public_settings(settings))
    assert [s.get_secret_value() for s in on_host.stripe.webhook_secrets] == ["whsec_old", "whsec_new"]
    assert on_host.metrics_token is not None
    assert on_host.metrics_token.get_secret_value() == "metrics-token-value"


def test_secret_digests_name_each_secret_and_tell_values_apart(tmp_path: Path) -> None:
    ours = secret_digests(_settings(tmp_path))
    assert ours["FOUNDRY_STRIPE__WEBHOOK_SECRETS"] == "unset"
    theirs = secret_digests(_settings(tmp_path, webhook_secrets=[SecretStr("whsec_x")]))
    assert {name for name in ours if ours[name] != theirs[name]} == {"FOUNDRY_STRIPE__WEBHOOK_SECRETS"}
    assert "sk_test_value" not in json.dumps(ours)
