"""Alerts: one message per run, by e-mail through the council's relay and by webhook (DESIGN §13).

A room of its own between ``job`` (which decides what a run's alert says and calls it) and
``dfe`` (whose TLS trust, proxy-aware session and bounded POST it reuses, so an alert leaves the
machine exactly as DfE's calls do). It knows nothing of runs or rows: it is given an
:class:`~api_pipeline.notify.message.Alert` (counts, field names and fixed sentences only) and
delivers it through each configured channel (:mod:`~api_pipeline.notify.channels`), within a
few seconds in all, saying in a sentence why a channel failed and never raising for it.
"""
