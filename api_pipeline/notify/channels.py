"""Which channels an alert goes through, delivering it through each within one time budget, and
``test-notify``.

Delivery never raises: each channel's outcome is a :class:`Delivery`, saying what was done or
why not, for the run to log and record (a failed alert is a warning, never a new exit code) and
for ``test-notify`` to print.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from api_pipeline.about import APP_NAME
from api_pipeline.errors import ConfigError, ExitCode, NotDelivered
from api_pipeline.notify.mail import email_problems, send_email
from api_pipeline.notify.message import Alert
from api_pipeline.notify.webhook import send_webhook
from api_pipeline.settings.config import Settings
from api_pipeline.settings.context import Context
from api_pipeline.settings.masking import hide_secrets, known_secrets
from api_pipeline.timestamps import utc_stamp
from api_pipeline.wording import printable

ALERT_SECONDS = 6.0  # all channels together: an alert never holds a run's end for longer
EMAIL, WEBHOOK = "e-mail", "webhook"


@dataclass(frozen=True)
class Delivery:
    """What became of an alert on one channel: ``said`` is what was done, or why it was not."""

    channel: str
    ok: bool
    said: str

    def line(self) -> str:
        return f"{self.channel}: {'sent' if self.ok else 'NOT sent'}: {self.said}"


def channels(settings: Settings) -> list[str]:
    """The channels set up: e-mail when SMTP_HOST is set, the webhook when NOTIFY_WEBHOOK_URL is."""
    found = []
    if settings.smtp_host:
        found.append(EMAIL)
    if settings.notify_webhook_url:
        found.append(WEBHOOK)
    return found


def setup_problems(settings: Settings) -> list[str]:
    """What stops alerts being sent as NOTIFY_ON asks, one sentence each (said at the start of a run)."""
    if settings.notify_on != "never" and not channels(settings):
        return [
            f"NOTIFY_ON is {settings.notify_on} but no channel is set up: set SMTP_HOST (with NOTIFY_EMAIL_FROM "
            "and NOTIFY_EMAIL_TO) and/or NOTIFY_WEBHOOK_URL"
        ]
    return email_problems(settings)


_SENDERS: dict[str, Callable[..., str]] = {EMAIL: send_email, WEBHOOK: send_webhook}


def deliver(settings: Settings, alert: Alert, *, seconds: float | None = None) -> list[Delivery]:
    """Send ``alert`` through every channel set up, ``seconds`` in all (default :data:`ALERT_SECONDS`)
    shared between them; never raises."""
    seconds = ALERT_SECONDS if seconds is None else seconds
    chosen = channels(settings)
    outcomes = []
    for channel in chosen:
        try:
            said = _SENDERS[channel](settings, alert, seconds=seconds / len(chosen))
            outcomes.append(Delivery(channel, True, said))
        except NotDelivered as exc:
            outcomes.append(Delivery(channel, False, _safe(str(exc))))
        except Exception as exc:  # a fault in the tool: the run's end must not be its victim
            outcomes.append(Delivery(channel, False, f"unexpected error: {type(exc).__name__}"))
    return outcomes


def _safe(text: str) -> str:
    """One line, with every secret known to the process hidden (the webhook address is one)."""
    return printable(hide_secrets(text, known_secrets()))


def test_alert(settings: Settings) -> Alert:
    """The alert ``test-notify`` sends: who sent it and where from, and nothing about any run."""
    la = settings.la_code or "(LA_CODE not set)"
    return Alert(
        title=f"CSC API Pipeline, LA {la}: test alert",
        level="test",
        facts=(
            ("LA code", la),
            ("Computer", socket.gethostname()),
            ("Sent at", utc_stamp()),
            ("NOTIFY_ON", settings.notify_on),
        ),
        next_steps=(
            f"Nothing to do: this is a test sent by '{APP_NAME} test-notify'. Runs send alerts as NOTIFY_ON says "
            f"(now: {settings.notify_on}).",
        ),
        data={"la_code": settings.la_code, "test": True, "notify_on": settings.notify_on},
    )


def test_notify(settings: Settings, ctx: Context) -> int:
    """The ``test-notify`` command: a test alert through each channel set up; exit 0 only if every one took it."""
    problems = (
        []
        if channels(settings)
        else [
            "no alert channel is set up: set SMTP_HOST (with NOTIFY_EMAIL_FROM and NOTIFY_EMAIL_TO) and/or "
            "NOTIFY_WEBHOOK_URL"
        ]
    )
    problems += email_problems(settings)
    if problems:
        raise ConfigError(problems)
    outcomes = deliver(settings, test_alert(settings))
    for outcome in outcomes:
        ctx.print(outcome.line())
    if all(outcome.ok for outcome in outcomes):
        if settings.notify_on == "never":
            ctx.print("note: NOTIFY_ON is never, so runs send no alert; set it to failure, problems or always")
        return ExitCode.OK
    return ExitCode.API
