"""`send_email` against a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from langchain_core.messages import ToolCall

from graph.settings import ConfigFile
from graph.toolset import build_toolset
from nodes.act import execute
from tests.support.net import free_port
from tests.support.smtp import smtp_server
from tools.email import message_id_for, smtp_email_tool
from tools.errors import ToolError, TransientToolError
from tools.registry import ToolSpec

SENDER = "warden@warden.test"


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps what it accepts and refuses some recipients."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    rcpt_attempts: list[str] = field(default_factory=list)
    dropped: int = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        self.rcpt_attempts.append(address)
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos == ["drop@example.com"]:
            # The message arrived, but the connection dies before the server confirms it.
            self.dropped += 1
            server.transport.close()
            return "250 never seen by the client"
        self.messages.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
            }
        )
        return "250 Message accepted for delivery"


def authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    def text(value: str | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else value

    ok = isinstance(auth_data, LoginPassword) and (
        text(auth_data.login),
        text(auth_data.password),
    ) == ("warden", "s3cret")
    # handled=False: aiosmtpd itself answers 535 on failure.
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield mailbox, controller.port
    finally:
        controller.stop()


@pytest.fixture
def smtp_auth() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield mailbox, controller.port
    finally:
        controller.stop()


def tool(port: int, **kw: Any) -> ToolSpec:
    return smtp_email_tool(host="127.0.0.1", port=port, sender=SENDER, timeout=3, **kw)


ARGS = {"to": "alice@example.com", "subject": "Quarterly report", "body": "Numbers attached.\n"}


def test_spec_and_model_facing_schema() -> None:
    spec = tool(25)
    assert (spec.name, spec.tier, spec.scopes) == (
        "send_email",
        "irreversible",
        frozenset({"email:send"}),
    )
    assert spec.idempotent is False
    # The idempotency key is a hook for Warden, never something the model can set.
    assert set(spec.tool.tool_call_schema.model_json_schema()["properties"]) == {
        "to",
        "subject",
        "body",
    }
    assert spec.args_model is not None
    assert "idempotency_key" not in spec.args_model.model_fields


async def test_delivers_a_real_message(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    result = await tool(port).tool.ainvoke(ARGS)
    assert result.startswith("email sent to alice@example.com (Message-ID <")
    assert len(mailbox.messages) == 1
    got = mailbox.messages[0]
    assert got["mail_from"] == SENDER and got["rcpt_tos"] == ["alice@example.com"]
    msg = got["message"]
    assert msg["To"] == "alice@example.com"
    assert msg["From"] == SENDER
    assert msg["Subject"] == "Quarterly report"
    assert msg.get_content().replace("\r\n", "\n") == "Numbers attached.\n"
    assert msg["Message-ID"].endswith("@warden.test>")
    assert msg["Message-ID"] in result
    assert msg["Date"]


async def test_idempotency_key_fixes_the_message_id(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    spec = tool(port)
    key = "thread-1:call-7"
    via_config = {"metadata": {"idempotency_key": key}}
    await spec.tool.ainvoke(ARGS, config=via_config)
    await spec.tool.ainvoke(ARGS, config=via_config)
    assert spec.tool.coroutine is not None
    await spec.tool.coroutine(**ARGS, idempotency_key=key)
    await spec.tool.ainvoke(ARGS)
    await spec.tool.ainvoke(ARGS)
    ids = [m["message"]["Message-ID"] for m in mailbox.messages]
    expected = message_id_for(key, "warden.test")
    assert ids[:3] == [expected] * 3
    assert len({ids[3], ids[4], expected}) == 3


async def test_server_down_is_transient() -> None:
    with pytest.raises(TransientToolError, match="cannot connect to the mail server"):
        await tool(free_port()).tool.ainvoke(ARGS)


async def test_permanent_and_temporary_refusals(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    spec = tool(port)
    with pytest.raises(ToolError) as permanent:
        await spec.tool.ainvoke({**ARGS, "to": "nobody@example.com"})
    assert not isinstance(permanent.value, TransientToolError)
    assert "550" in str(permanent.value) and "no such user" in str(permanent.value)
    with pytest.raises(TransientToolError, match="451"):
        await spec.tool.ainvoke({**ARGS, "to": "later@example.com"})
    assert mailbox.rcpt_attempts == ["nobody@example.com", "later@example.com"]
    assert mailbox.messages == []


async def test_lost_confirmation_is_not_retryable(smtp: tuple[Mailbox, int]) -> None:
    """After DATA the message may be delivered: never report that as safe to retry."""
    mailbox, port = smtp
    with pytest.raises(ToolError) as err:
        await tool(port).tool.ainvoke({**ARGS, "to": "drop@example.com"})
    assert not isinstance(err.value, TransientToolError)
    assert "may or may not have been delivered" in str(err.value)
    assert mailbox.dropped == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_authentication(smtp_auth: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_auth
    with pytest.raises(ToolError) as bad:
        await tool(port, username="warden", password="wrong").tool.ainvoke(ARGS)
    assert not isinstance(bad.value, TransientToolError)
    assert "535" in str(bad.value)
    with pytest.raises(ToolError, match="530"):
        await tool(port).tool.ainvoke(ARGS)  # no credentials: the server insists
    assert mailbox.messages == []
    await tool(port, username="warden", password="s3cret").tool.ainvoke(ARGS)
    assert [m["rcpt_tos"] for m in mailbox.messages] == [["alice@example.com"]]


async def test_starttls_not_offered_is_refused(smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    with pytest.raises(ToolError, match="does not support"):
        await tool(port, use_starttls=True).tool.ainvoke(ARGS)
    assert mailbox.messages == []


@pytest.mark.parametrize(
    "bad",
    [
        {"to": "alice@example.com\r\nBcc: eve@evil.test"},
        {"to": "alice@example.com, eve@evil.test"},
        {"to": "Alice <alice@example.com>"},
        {"subject": "hi\r\nBcc: eve@evil.test"},
        {"body": "x" * 100_001},
        {"cc": "eve@evil.test"},
        {"idempotency_key": "forged"},
    ],
)
async def test_arguments_are_validated_before_sending(
    smtp: tuple[Mailbox, int], bad: dict[str, str]
) -> None:
    mailbox, port = smtp
    spec = tool(port)
    call = ToolCall(name="send_email", args={}, id="e1")
    message = await execute(spec, call, {**ARGS, **bad}, 10)
    assert message.status == "error"
    assert message.response_metadata["warden"]["error"] == "invalid_arguments"
    assert mailbox.messages == [] and mailbox.rcpt_attempts == []


async def test_config_timeout_reaches_the_smtp_exchange(tmp_path: Path) -> None:
    """`[email] timeout` bounds each exchange: a reply slower than it is in doubt."""
    gate = threading.Event()
    with smtp_server(gate=gate) as (inbox, port):
        table = {"host": "127.0.0.1", "port": port, "sender": SENDER}
        [slow] = [
            s for s in build_toolset(tmp_path, tmp_path, ConfigFile(email={**table, "timeout": 1.5}))
            if s.name == "send_email"
        ]
        assert slow.timeout == pytest.approx(6.0)
        try:
            with pytest.raises(ToolError, match="may or may not have been delivered"):
                await slow.tool.ainvoke(ARGS)  # the reply to DATA never comes in time
        finally:
            gate.set()
        [patient] = [
            s for s in build_toolset(tmp_path, tmp_path, ConfigFile(email={**table, "timeout": 30}))
            if s.name == "send_email"
        ]
        assert "email sent to alice@example.com" in await patient.tool.ainvoke(ARGS)
        assert len(inbox.messages) == 2  # the slow reply's message arrived: truly in doubt
