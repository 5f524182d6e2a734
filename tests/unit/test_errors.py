"""One error root: every exception the product defines derives from GroundworkError, so the CLI,
the service and the eval harness can tell "something the user can fix" from a bug."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from core.errors import GroundworkError

PACKAGES = [
    "core",
    "generators",
    "retrieval",
    "tools",
    "agent",
    "graphs",
    "evals",
    "service",
    "cli",
]


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        module = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{pkg}."):
            if info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


def test_every_product_exception_derives_from_groundwork_error() -> None:
    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            if not issubclass(cls, GroundworkError):
                strays.append(f"{name}.{cls.__name__}")
    assert strays == []
