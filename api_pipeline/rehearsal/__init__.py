"""Rehearsal: everything that stands in for DfE or for a council, for demos, tests and dry runs.

DfE's API as a local server (``simulator``, its HTTP plumbing in ``simulator_http``) with its
merge model and schema check (``dfe_model``), synthetic children and how they change between nights (``synthetic``,
``synthetic_changes``), sample rows for an empty table (``sample``) and the ``demo`` command.
"""
