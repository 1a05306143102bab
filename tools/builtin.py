"""The default tool set when no config file is given: workspace reads and a local outbox.

The workspace tools come from `tools.files` (the confined, sandboxed implementation);
`send_email` here delivers to a JSON-lines outbox instead of an SMTP server
(`tools.email`), so the demo and tests need no mail server.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

from langchain_core.tools import StructuredTool

from tools.email import SendEmailArgs  # one model-facing schema for both backends
from tools.files import file_tools
from tools.memory import memory_tools
from tools.registry import ToolSpec


def workspace_tools(root: Path) -> list[ToolSpec]:
    """Return `list_files` and `read_file` confined to `root` (see tools.files)."""
    return [spec for spec in file_tools(root) if spec.tier == "read"]


def outbox_email_tool(outbox: Path) -> ToolSpec:
    """Return an irreversible `send_email` that delivers to a local outbox file."""

    def send_email(to: str, subject: str, body: str) -> str:
        """Send an email. This cannot be undone, so a human approves it first."""
        outbox.mkdir(parents=True, exist_ok=True)
        message_id = f"<{uuid.uuid4()}@warden.local>"
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

    return ToolSpec(
        tool=StructuredTool.from_function(send_email, args_schema=SendEmailArgs),
        tier="irreversible",
        scopes=frozenset({"email:send"}),
    )


def default_tools(workspace: Path, outbox: Path) -> list[ToolSpec]:
    """Return the tools the CLI and the demo offer: workspace reads, the email outbox, memory."""
    return [*workspace_tools(workspace), outbox_email_tool(outbox), *memory_tools()]
