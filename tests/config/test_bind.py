"""Which addresses mock mode may listen on, and the explicit override."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry.bind import public_mock_refusal
from foundry.config import Settings


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_mock_mode_may_bind_loopback(tmp_path: Path, host: str) -> None:
    assert public_mock_refusal(_settings(tmp_path, mode="mock", host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "no-such-host.invalid"])
def test_mock_mode_refuses_other_addresses(tmp_path: Path, host: str) -> None:
    refusal = public_mock_refusal(_settings(tmp_path, mode="mock", host=host))
    assert refusal is not None
    assert repr(host) in refusal


def test_the_explicit_override_and_production_mode_bind_anywhere(tmp_path: Path) -> None:
    assert (
        public_mock_refusal(_settings(tmp_path, mode="mock", host="0.0.0.0", allow_public_mock=True)) is None
    )
    assert public_mock_refusal(_settings(tmp_path, mode="production", host="0.0.0.0")) is None
