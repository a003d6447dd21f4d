"""Drivers are built on first use, so a (re)starting host process does not wait for SDK imports."""

from __future__ import annotations

import pytest

from foundry.services import Drivers


def test_a_driver_is_built_once_on_first_use_and_listed_before() -> None:
    built: list[str] = []
    drivers = Drivers()
    drivers.register("github", lambda: built.append("github") or "gh")
    assert "github" in drivers
    assert list(drivers) == ["github"]
    assert built == []
    assert drivers["github"] == "gh"
    assert drivers.get("github") == "gh"
    assert built == ["github"]
    assert drivers.get("stripe") is None
    assert "stripe" not in drivers


def test_a_driver_that_fails_to_build_fails_the_same_way_every_time() -> None:
    drivers = Drivers()

    def broken() -> object:
        raise ValueError("the GitHub App's private key is not a PEM key")

    drivers.register("github", broken)
    for _ in range(2):
        with pytest.raises(ValueError, match="private key"):
            drivers["github"]


def test_a_driver_set_directly_replaces_a_registered_one() -> None:
    drivers = Drivers()
    drivers.register("github", lambda: "real")
    drivers["github"] = "fake"
    assert drivers["github"] == "fake"
    assert len(drivers) == 1
    del drivers["github"]
    assert "github" not in drivers
