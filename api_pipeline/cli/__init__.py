"""The command line: the parser and the one error boundary (``main``), the console, and the
commands that are more than a run: ``status``, the ``test-*`` diagnostics and ``init-db``
(``diagnostics``), ``set-secret`` (``credentials``); the one-file exe's start (``entry_point``,
``onefile``).
"""
