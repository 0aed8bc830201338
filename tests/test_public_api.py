"""Every public name resolves: the lazy table of ``launch/__init__.py`` follows moved modules."""

from __future__ import annotations

import importlib

import pytest

import launch


@pytest.mark.parametrize("name", launch.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(launch, name) is not None


@pytest.mark.parametrize("package", ["launch.testing", "launch.integrations.torch", "launch.bench"])
def test_every_name_of_a_public_package_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", ()):
        assert getattr(module, name) is not None, f"{package}.{name}"
