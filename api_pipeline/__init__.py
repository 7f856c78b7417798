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
- at the ground, the words every room shares: ``errors``, ``reasons``, ``timestamps``,
  ``wording``, and ``stopping`` (Ctrl+C and the system's signals).

Where to change what: ``docs/contributing.md``.
"""

__version__ = "0.1.0.dev0"

APP_NAME = "csc-api-pipeline"
