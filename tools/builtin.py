"""The default tool set when no config file is given: workspace reads and a local outbox.

The workspace tools come from `tools.files` (the confined, sandboxed implementation);
`send_email` here delivers to a JSON-lines outbox instead of an SMTP server
(`tools.email`), so the demo and tests need no mail server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langchain_core.tools import StructuredTool

from tools.email import SendEmailArgs, message_id_for  # one schema for both backends
from tools.files import file_tools
from tools.idempotency import current_idempotency_key
from tools.memory import memory_tools
from tools.registry import Reconciled, ToolSpec


def workspace_tools(root: Path) -> list[ToolSpec]:
    """Return `list_files` and `read_file` confined to `root` (see tools.files)."""
    return [spec for spec in file_tools(root) if spec.tier == "read"]


OUTBOX_DOMAIN = "warden.local"


def sent_from_outbox(outbox: Path, message_id: str) -> dict[str, Any] | None:
    """Return the outbox record with this Message-ID, if it was delivered."""
    try:
        lines = (outbox / "outbox.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash was never delivered
            continue
        if isinstance(record, dict) and record.get("message_id") == message_id:
            return record
    return None


def outbox_email_tool(outbox: Path) -> ToolSpec:
    """Return an irreversible `send_email` that delivers to a local outbox file.

    Under a ledgered call the Message-ID derives from the idempotency key, so after a
    crash the reconcile hook finds out from the outbox whether the message went out.
    """

    def send_email(to: str, subject: str, body: str) -> str:
        """Send an email. This cannot be undone, so a human approves it first."""
        outbox.mkdir(parents=True, exist_ok=True)
        message_id = message_id_for(current_idempotency_key(), OUTBOX_DOMAIN)
        record = {
            "message_id": message_id,
            "to": to,
            "subject": subject,
            "body": body,
            "sent_at": datetime.now(UTC).isoformat(),
        }
        with (outbox / "outbox.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return f"email sent to {to} (Message-ID {message_id})"

    def reconcile(args: dict[str, Any], key: str) -> Reconciled:
        message_id = message_id_for(key, OUTBOX_DOMAIN)
        if sent_from_outbox(outbox, message_id) is None:
            return Reconciled("absent")
        return Reconciled("done", f"email sent to {args['to']} (Message-ID {message_id})")

    return ToolSpec(
        tool=StructuredTool.from_function(send_email, args_schema=SendEmailArgs),
        tier="irreversible",
        scopes=frozenset({"email:send"}),
        reconcile=reconcile,
    )


def default_tools(workspace: Path, outbox: Path) -> list[ToolSpec]:
    """Return the tools the CLI and the demo offer: workspace reads, the email outbox, memory."""
    return [*workspace_tools(workspace), outbox_email_tool(outbox), *memory_tools()]
