"""`send_email` over SMTP (tier irreversible, scope `email:send`).

smtplib runs in a worker thread. Errors are split by what they mean for a retry:

- nothing was handed over yet (connection refused or dropped, timeouts before DATA,
  4xx replies): `TransientToolError`, a retry is safe;
- 5xx replies (recipient unknown, message rejected, authentication failed): `ToolError`;
- the connection died after the message was sent but before the server confirmed it:
  the message may have been delivered, so it is a plain `ToolError` that is not retried
  automatically (an irreversible action is never repeated on a guess).

Idempotency hook: the Python function takes an optional `idempotency_key` that is NOT
part of the model-facing argument model (the model cannot set it). The caller that runs
the tool can pass it either directly, `await spec.tool.coroutine(**args,
idempotency_key=key)`, or through the runnable config, `await spec.tool.ainvoke(args,
config={"metadata": {"idempotency_key": key}})`. With a key, the Message-ID is derived
from it, so a repeated delivery of the same call carries the same Message-ID and
receivers can drop the duplicate; `act` passes the ledger's key (`checkpoints.ledger`).
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from tools.errors import ToolError, TransientToolError
from tools.idempotency import current_idempotency_key
from tools.registry import ToolSpec

# The WHATWG (HTML5) e-mail address syntax, with a dotted domain: one plain address,
# no display name, no lists, nothing that could smuggle a second recipient or a header.
ADDRESS_PATTERN = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


class SendEmailArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(
        min_length=3, max_length=320, pattern=ADDRESS_PATTERN, description="One recipient address."
    )
    # No CR or LF: a header value with a line break could inject headers.
    subject: str = Field(max_length=998, pattern=r"^[^\r\n]*$", description="Subject line.")
    body: str = Field(max_length=100_000, description="Plain-text body.")


_NO_CONFIG: RunnableConfig = {}


def message_id_for(key: str | None, domain: str) -> str:
    """Return a Message-ID: derived from the idempotency key when there is one."""
    if key is None:
        return make_msgid(domain=domain)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return f"<{digest}@{domain}>"


class SmtpSender:
    """Delivers one message per call to a configured SMTP server."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        timeout: float,
        use_starttls: bool,
        username: str | None,
        password: str | None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        self.host = host
        self.port = port
        self.sender = sender
        self.timeout = timeout
        self.use_starttls = use_starttls
        self.username = username
        self.password = password
        self.domain = sender.rsplit("@", 1)[-1] or "warden.local"

    def build(self, to: str, subject: str, body: str, key: str | None) -> EmailMessage:
        """Build the message (the email package refuses header injection too)."""
        msg = EmailMessage()
        try:
            msg["From"] = self.sender
            msg["To"] = to
            msg["Subject"] = subject
        except ValueError as exc:
            raise ToolError(f"invalid header: {exc}") from None
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = message_id_for(key, self.domain)
        msg.set_content(body)
        return msg

    def _connect(self) -> smtplib.SMTP:
        """Open an authenticated session; any failure here means nothing was sent."""
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except smtplib.SMTPResponseException as exc:
            raise _reply_error("connect", exc) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientToolError(
                f"cannot connect to the mail server {self.host}:{self.port}: {exc}"
            ) from None
        try:
            smtp.ehlo()
            if self.use_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password)
        except smtplib.SMTPNotSupportedError as exc:
            _close(smtp)
            raise ToolError(f"the mail server does not support this: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            _close(smtp)
            raise _reply_error("session setup", exc) from None
        except (OSError, smtplib.SMTPException) as exc:
            _close(smtp)
            raise TransientToolError(f"mail server session failed before sending: {exc}") from None
        return smtp

    def send(self, msg: EmailMessage) -> None:
        """Send `msg` (blocking; run it in a thread)."""
        smtp = self._connect()
        try:
            refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()), (550, b"refused"))
            raise _reply_error("recipient", smtplib.SMTPResponseException(code, text)) from None
        except smtplib.SMTPResponseException as exc:
            raise _reply_error("send", exc) from None
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise ToolError(
                f"the connection to the mail server failed while sending ({exc}); the message "
                "may or may not have been delivered, so it is not retried automatically"
            ) from None
        finally:
            _close(smtp)
        if refused:
            raise ToolError(f"the mail server refused recipients: {sorted(refused)}")


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def _reply_error(stage: str, exc: smtplib.SMTPResponseException) -> ToolError:
    """4xx replies are temporary (retry later); 5xx are permanent."""
    text = (
        exc.smtp_error.decode("utf-8", "replace")
        if isinstance(exc.smtp_error, bytes)
        else str(exc.smtp_error)
    )
    what = f"mail server refused ({stage}): {exc.smtp_code} {text}"
    if 400 <= exc.smtp_code < 500:
        return TransientToolError(what)
    return ToolError(what)


def smtp_email_tool(
    *,
    host: str,
    port: int,
    sender: str,
    timeout: float = 10.0,
    use_starttls: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> ToolSpec:
    """Return `send_email` delivering through an SMTP server (tier irreversible)."""
    smtp = SmtpSender(
        host=host,
        port=port,
        sender=sender,
        timeout=timeout,
        use_starttls=use_starttls,
        username=username,
        password=password,
    )

    async def send_email(
        to: str,
        subject: str,
        body: str,
        idempotency_key: str | None = None,
        *,
        # Annotated exactly RunnableConfig so LangChain injects the run's config.
        config: RunnableConfig = _NO_CONFIG,
    ) -> str:
        """Send a plain-text email to one recipient. It cannot be undone, so a human approves it."""
        if idempotency_key is None:
            key = (config.get("metadata") or {}).get("idempotency_key")
            idempotency_key = str(key) if key is not None else current_idempotency_key()
        msg = smtp.build(to, subject, body, idempotency_key)
        await asyncio.to_thread(smtp.send, msg)
        return f"email sent to {to} (Message-ID {msg['Message-ID']})"

    return ToolSpec(
        tool=StructuredTool.from_function(coroutine=send_email, args_schema=SendEmailArgs),
        tier="irreversible",
        scopes=frozenset({"email:send"}),
        # Connect, EHLO, (STARTTLS, AUTH), MAIL, RCPT, DATA each get `timeout`.
        timeout=timeout * 4,
        idempotent=False,
    )
