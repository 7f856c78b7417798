"""CSC API Pipeline: send children's social care records to the DfE CSC API.

Where to make a change (the layers, top to bottom, are declared in ``pyproject.toml`` and
checked by ``lint-imports``):

- a database dialect: ``dialects.py`` holds every difference between the DBMSs (SQL forms,
  table definitions, the lock table, catalogue queries, session settings); ``odbc.py`` only a
  new driver's connection defaults and error advice;
- the retry policy: ``api.py`` (``classify``, ``ApiClient``'s stop and wait rules and the
  backoff constants); the token's own retries are in ``auth.py``;
- the delta model: ``payload.py`` (``STRUCTURE`` and the builders; the simulator in
  ``dfe_model.py`` merges by the same structure), and what each row needs in ``pipeline.py``;
- a setting: its row in ``config.OPTIONS`` (the docs are generated from it; a test checks
  ``.env.example`` lists it);
- an exit code: ``errors.ExitCode`` (the help, the run report and the docs render it).
"""

__version__ = "0.1.0.dev0"

APP_NAME = "csc-api-pipeline"
