"""Settings: what the tool is told, and where from.

The settings, one row each, and loading them (``config``), what a setting is and how its text
is read (``options``), the ``.env`` file (``envfile``), paths relative to it (``paths``),
secrets kept in the operating system's store (``secret_store``), the SQL login built from
``DB_USER``/``DB_PASSWORD`` (``db_login``), and the secrets to hide in text and how
(``masking``). It knows nothing of DfE, the database or a run.
"""
