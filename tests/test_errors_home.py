"""Exceptions have one home, ``errors.py``, grouped by what the caller should do; only those no
other module sees live where they are raised."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import api_pipeline

# Raised and caught inside one module, never seen by another (errors.py's docstring says why).
PRIVATE = {
    "api_pipeline.dfe.api.UnusableReceipts",
    "api_pipeline.dfe.auth._TokenEndpointBusy",
    "api_pipeline.dfe.tls.ProxyRefused",
}


def _exceptions_outside_errors() -> set[str]:
    found = set()
    for module_info in pkgutil.walk_packages(api_pipeline.__path__, "api_pipeline."):
        if module_info.name in ("api_pipeline.errors", "api_pipeline.__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.add(f"{module.__name__}.{name}")
    return found


def test_every_exception_lives_in_errors_but_the_private_ones():
    assert _exceptions_outside_errors() == PRIVATE


def test_no_module_imports_a_private_exception_from_another():
    for dotted in PRIVATE:
        module_name, _, name = dotted.rpartition(".")
        for module_info in pkgutil.walk_packages(api_pipeline.__path__, "api_pipeline."):
            if module_info.name in (module_name, "api_pipeline.__main__"):
                continue
            module = importlib.import_module(module_info.name)
            assert getattr(module, name, None) is not getattr(importlib.import_module(module_name), name), (
                f"{module_info.name} uses {dotted}"
            )
