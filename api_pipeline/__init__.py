"""CSC API Pipeline: send children's social care records to the DfE CSC API.

The package is in rooms, each a subpackage with its own docstring; ``pyproject.toml`` declares
their order and ``lint-imports`` checks it (a room imports only from rooms below it):

- ``cli``: the command line, its one error boundary, ``status`` and the diagnostics;
- ``rehearsal``: the DfE simulator, synthetic children and the demo;
- ``job``: one run, from the staging table's rows to the receipts written back;
- ``dfe`` and ``store``: the DfE side (payloads, schema, API client, token, HTTP, TLS) and the
  database side (connections, dialects, the staging table and ledger, the run lock), which
  know nothing of each other;
- ``settings``: the options, the ``.env`` file, the secret store and masking;
- at the ground, the words every room shares: ``about`` (the name and version), ``errors``,
  ``reasons``, ``timestamps``, ``wording``, and ``stopping`` (Ctrl+C and the system's signals).

From Python (a notebook): ``from api_pipeline import run`` (``api_pipeline.library``; docs/notebooks.md).

Where to change what: ``docs/contributing.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from api_pipeline.about import APP_NAME, __version__

__all__ = ["APP_NAME", "RunFailed", "RunResult", "__version__", "run"]
_LIBRARY = frozenset({"run", "RunResult", "RunFailed"})


def __getattr__(name: str) -> Any:
    """``run`` and its result, imported when first asked for, so that ``import api_pipeline`` does
    no work (the PyInstaller spec reads ``__version__`` through it; the run's imports take a good
    part of a second).

    By name (``importlib``), not an import statement: Python runs this file before any module of
    the package, so a statement here would load every room whatever was imported.
    """
    if name in _LIBRARY:
        return getattr(importlib.import_module("api_pipeline.library"), name)
    raise AttributeError(f"module 'api_pipeline' has no attribute {name!r}")
