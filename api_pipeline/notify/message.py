"""What an alert says, and its shape for each place it goes: e-mail text, a Teams Adaptive Card,
a Slack message, or one JSON object.

An :class:`Alert` holds only what its builder put in it: counts, field names, exit codes and
the tool's own sentences. Nothing here reads a record or a secret, so no format can carry one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from api_pipeline.about import APP_NAME, __version__

LEVELS = ("ok", "problems", "failed", "test")
_TEAMS_COLOURS = {"ok": "good", "problems": "warning", "failed": "attention", "test": "accent"}
_SLACK_TEXT_LIMIT = 2900  # characters: Slack refuses a section longer than 3000
_SLACK_HEADER_LIMIT = 150


@dataclass(frozen=True)
class Alert:
    """One alert: a title, facts (label, value), problems by field (field, rows) and what to do next.

    ``data`` is the same again for machines (the ``json`` webhook format): plain JSON values.
    """

    title: str
    level: str
    facts: tuple[tuple[str, str], ...] = ()
    problems: tuple[tuple[str, int], ...] = ()
    next_steps: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The alert as plain text: the e-mail's body, and the fallback text of the webhook formats."""
        width = max((len(label) for label, _ in self.facts), default=0)
        lines = [self.title, ""]
        lines += [f"{label + ':':<{width + 1}} {value}" for label, value in self.facts]
        if self.problems:
            lines += ["", "Problems by field (rows):"]
            lines += [f"  {name}: {count}" for name, count in self.problems]
        if self.next_steps:
            lines += ["", "What to do next:"]
            lines += [f"  - {step}" for step in self.next_steps]
        lines += ["", f"Sent by {APP_NAME} {__version__}. Alerts carry counts and field names only, never a record."]
        return "\n".join(lines) + "\n"


def webhook_body(alert: Alert, form: str) -> dict[str, Any]:
    """The JSON document NOTIFY_WEBHOOK_FORMAT ``form`` (teams, slack or json) expects."""
    if form == "teams":
        return teams_body(alert)
    if form == "slack":
        return slack_body(alert)
    return json_body(alert)


def json_body(alert: Alert) -> dict[str, Any]:
    return {
        "tool": APP_NAME,
        "version": __version__,
        "title": alert.title,
        "level": alert.level,
        **alert.data,
        "problems": [{"field": name, "rows": count} for name, count in alert.problems],
        "next_steps": list(alert.next_steps),
        "text": alert.text(),
    }


def teams_body(alert: Alert) -> dict[str, Any]:
    """An Adaptive Card in a message, as a Teams Workflows ("When a Teams webhook request is received")
    trigger takes it and posts it to a channel."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": alert.title,
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
            "color": _TEAMS_COLOURS.get(alert.level, "default"),
        },
        {"type": "FactSet", "facts": [{"title": label, "value": value} for label, value in alert.facts]},
    ]
    if alert.problems:
        body.append({"type": "TextBlock", "text": "Problems by field (rows)", "weight": "Bolder", "wrap": True})
        body.append({"type": "FactSet", "facts": [{"title": n, "value": str(c)} for n, c in alert.problems]})
    if alert.next_steps:
        body.append({"type": "TextBlock", "text": "What to do next", "weight": "Bolder", "wrap": True})
        body += [{"type": "TextBlock", "text": f"- {step}", "wrap": True} for step in alert.next_steps]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    attachment = {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
    return {"type": "message", "attachments": [attachment]}


def _slack_escape(text: str) -> str:
    """Slack's three control characters in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(alert: Alert) -> dict[str, Any]:
    """An incoming-webhook message: a header, then the facts, problems and next steps as one section."""
    lines = [f"*{_slack_escape(label)}:* {_slack_escape(value)}" for label, value in alert.facts]
    if alert.problems:
        lines += ["", "*Problems by field (rows)*"] + [f"• {_slack_escape(n)}: {c}" for n, c in alert.problems]
    if alert.next_steps:
        lines += ["", "*What to do next*"] + [f"• {_slack_escape(step)}" for step in alert.next_steps]
    section = "\n".join(lines)
    if len(section) > _SLACK_TEXT_LIMIT:
        section = section[: _SLACK_TEXT_LIMIT - 1] + "…"
    title = alert.title if len(alert.title) <= _SLACK_HEADER_LIMIT else alert.title[: _SLACK_HEADER_LIMIT - 1] + "…"
    return {
        "text": _slack_escape(alert.title),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": section}},
        ],
    }


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
