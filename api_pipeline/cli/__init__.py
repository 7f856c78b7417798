"""The command line: the parser, one function per command beside its handler (``parser``), the
one error boundary (``main``) and what a failed command says (``error_lines``), the console, and
the commands that are more than a run: ``status``, the ``test-*`` diagnostics and ``init-db``
(``diagnostics``), ``set-secret`` (``credentials``); the one-file exe's start (``entry_point``,
``onefile``).
"""
