"""Alerts by e-mail through the council's mail relay: STARTTLS verified with DfE's trust, a deadline
for the whole exchange, and a sentence for whatever goes wrong.

``smtplib`` times each socket operation, not the exchange, so a relay that answers slowly line
by line could hold a run's end for minutes: a timer shuts the socket down when the deadline
passes, and the blocked read returns at once. A password is never sent unencrypted: with
SMTP_STARTTLS false, SMTP_USER is refused.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from api_pipeline.dfe.tls import build_ssl_context
from api_pipeline.errors import ConfigError, NotDelivered
from api_pipeline.notify.message import Alert
from api_pipeline.settings.config import Settings


class _Relay(smtplib.SMTP):
    """smtplib's client, made before it connects (so the deadline's timer can reach its socket), that
    still checks the relay's certificate against SMTP_HOST: smtplib remembers the host STARTTLS
    verifies only when its constructor connects."""

    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> Any:
        self._host = host
        return super().connect(host, port, source_address)


def email_problems(settings: Settings) -> list[str]:
    """What stops alerts by e-mail, one sentence each; none when SMTP_HOST is unset (no e-mail wanted)."""
    if not settings.smtp_host:
        return []
    problems = []
    if not settings.notify_email_from:
        problems.append("SMTP_HOST is set but NOTIFY_EMAIL_FROM is not: set the address alerts come from")
    if not settings.notify_email_to:
        problems.append("SMTP_HOST is set but NOTIFY_EMAIL_TO is not: set who gets alerts")
    if settings.smtp_user and not settings.smtp_password:
        problems.append("SMTP_USER is set but SMTP_PASSWORD is not")
    if settings.smtp_password and not settings.smtp_user:
        problems.append("SMTP_PASSWORD is set but SMTP_USER is not")
    if settings.smtp_user and not settings.smtp_starttls:
        problems.append(
            "SMTP_USER is set but SMTP_STARTTLS is false: the password would cross the network unencrypted, "
            "so it is never sent. Set SMTP_STARTTLS=true (the relay must offer STARTTLS)"
        )
    return problems


def email_message(settings: Settings, alert: Alert) -> EmailMessage:
    assert settings.notify_email_from and settings.notify_email_to
    message = EmailMessage()
    message["Subject"] = alert.title
    message["From"] = settings.notify_email_from
    message["To"] = ", ".join(settings.notify_email_to)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=settings.notify_email_from.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies to a robot
    message.set_content(alert.text())
    return message


def send_email(settings: Settings, alert: Alert, *, seconds: float) -> str:
    """Send ``alert`` to NOTIFY_EMAIL_TO within ``seconds``; returns what was done, in words.

    Raises :class:`NotDelivered` saying why.
    """
    problems = email_problems(settings)
    if problems:
        raise NotDelivered("; ".join(problems))
    host, port = settings.smtp_host or "", settings.smtp_port
    where = f"the mail relay {host}:{port}"
    message = email_message(settings, alert)
    try:
        context = build_ssl_context(settings.ca_bundle).context if settings.smtp_starttls else None
    except ConfigError as exc:  # CA_BUNDLE missing or not PEM
        raise NotDelivered(str(exc)) from None
    smtp = _Relay(timeout=seconds)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = smtp.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: a blocked TLS read returns too

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        smtp.connect(host, port)
        smtp.ehlo()
        if context is not None:
            smtp.starttls(context=context)
            smtp.ehlo()
        if settings.smtp_user and settings.smtp_password:
            smtp.login(settings.smtp_user, settings.smtp_password.reveal())
        smtp.send_message(message)
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
    except (smtplib.SMTPException, OSError) as exc:
        raise NotDelivered(_why(exc, where, seconds, expired.is_set(), settings)) from None
    finally:
        timer.cancel()
        smtp.close()
    count = len(settings.notify_email_to or ())
    return f"e-mailed to {count} address{'es' if count != 1 else ''} through {where}"


def _why(exc: BaseException, where: str, seconds: float, expired: bool, settings: Settings) -> str:
    """What went wrong with the relay, in a sentence: codes and fixed words, never the relay's own text
    (which may repeat an address or a user name)."""
    if expired or isinstance(exc, (socket.timeout, TimeoutError)):
        return f"{where} did not finish within {seconds:g} seconds"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {where} could not be verified. If it is signed by your council's own "
            "certificate authority, set CA_BUNDLE to a PEM file of it (or ask IT to install it in the Windows "
            "certificate store). TLS verification is never turned off"
        )
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with {where} failed (STARTTLS). Ask IT whether the relay offers TLS 1.2 or later"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return (
            f"{where} does not offer STARTTLS, so the alert was not sent unencrypted. Ask IT for a relay or port "
            "that does (usually 587); SMTP_STARTTLS=false is only for an internal relay that takes no login"
        )
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"{where} refused SMTP_USER and SMTP_PASSWORD (SMTP {exc.smtp_code}): check them with IT"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"{where} refused {len(exc.recipients)} of the NOTIFY_EMAIL_TO addresses: check them"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return f"{where} refused NOTIFY_EMAIL_FROM as the sender (SMTP {exc.smtp_code}): ask IT which it allows"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{where} answered SMTP {exc.smtp_code}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"{where} closed the connection before the alert was sent"
    if isinstance(exc, socket.gaierror):
        return f"the host name in SMTP_HOST ({settings.smtp_host}) could not be resolved (DNS)"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where} refused the connection: check SMTP_HOST and SMTP_PORT, and the firewall"
    return f"could not talk to {where} ({type(exc).__name__})"
