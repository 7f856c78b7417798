"""Settings: what the tool is told, and where from.

The options and their parsing (``config``), the ``.env`` file (``envfile``), paths relative to
it (``paths``), secrets kept in the operating system's store (``secret_store``), the SQL login
built from ``DB_USER``/``DB_PASSWORD`` (``db_login``), and hiding secrets in text (``masking``).
It knows nothing of DfE, the database or a run.
"""
