"""Switching to a secondary credential when DfE changes one (DESIGN §6, §9).

DfE replaces a client secret or a subscription key with a new one while the old one still works
for a while. A council sets the new one as ``CLIENT_SECRET_SECONDARY`` or
``SUPPLIER_KEY_SECONDARY`` ahead of the change; when the primary is refused, the run switches to
the secondary, once, and carries on. The token (``auth``) and the API client (``api``) each
decide when a refusal means "this credential", and say so in their own words; the switch is here.
"""

from __future__ import annotations

import threading

from api_pipeline.settings.config import Secret


class Rotation:
    """A credential and its optional secondary; :meth:`switch` moves to the secondary once per run.

    A secondary that is empty or the same as the primary is no secondary. Thread-safe: batches in
    flight that are refused together switch once between them.
    """

    def __init__(self, primary: Secret, secondary: Secret | None) -> None:
        self.current = primary
        self.secondary = secondary if secondary and secondary != primary else None
        self.on_secondary = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Rotation({self.current!r}, on_secondary={self.on_secondary})"  # the Secret's repr hides it

    def switch(self) -> bool:
        """Use the secondary from now on. False when there is none, or it is already in use."""
        with self._lock:
            if self.secondary is None or self.on_secondary:
                return False
            self.current, self.on_secondary = self.secondary, True
            return True
