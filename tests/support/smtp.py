"""A real SMTP server (aiosmtpd on loopback) that keeps what it accepts, for crash tests."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.net import free_port


@dataclass
class Inbox:
    """Accepted messages; `hold` delays the 250 reply after a message is stored.

    The delay widens the window where a message is delivered but the sender has no
    confirmation yet: a process killed then leaves a call truly in doubt. `gate`, when
    given, holds the reply until the test sets it, so a sender can
    be kept mid-call for exactly as long as a test needs (at most 100 s).
    """

    hold: float = 0.0
    gate: threading.Event | None = None
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
        await asyncio.sleep(self.hold)
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait, 100.0)
        return "250 Message accepted for delivery"

    def with_message_id(self, message_id: str) -> int:
        """Count the accepted messages that carry this Message-ID."""
        with self.lock:
            return sum(1 for m in self.messages if m["Message-ID"] == message_id)


@contextmanager
def smtp_server(
    hold: float = 0.0, gate: threading.Event | None = None
) -> Iterator[tuple[Inbox, int]]:
    """Run an SMTP server on a free loopback port; yield its inbox and port."""
    inbox = Inbox(hold=hold, gate=gate)
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()
