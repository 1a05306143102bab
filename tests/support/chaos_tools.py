"""A SQL write tool for crash tests, loaded by `[[tools]]` from a config file.

`record_order` inserts one row keyed by the call's idempotency key (a UNIQUE column):
a repeated execution would fail loudly with a unique violation instead of writing a
second row. `order_recorded` is its reconcile hook: after a crash it looks the key up.
The DSN comes from CHAOS_SQL_DSN; a short pause on each side of the commit widens the
windows where a kill lands mid-call.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from tools.idempotency import current_idempotency_key
from tools.registry import Reconciled

PAUSE_S = 0.15
SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_orders (
    idem_key text PRIMARY KEY,
    item text NOT NULL,
    qty integer NOT NULL
)
"""


def _connect() -> psycopg.Connection[Any]:
    return psycopg.connect(os.environ["CHAOS_SQL_DSN"], autocommit=True, connect_timeout=5)


def record_order(item: str, qty: int) -> str:
    """Record an order for `qty` units of `item` in the orders database."""
    key = current_idempotency_key()
    time.sleep(PAUSE_S)
    with _connect() as conn:
        conn.execute(
            "INSERT INTO chaos_orders (idem_key, item, qty) VALUES (%s, %s, %s)", (key, item, qty)
        )
    time.sleep(PAUSE_S)
    return f"order recorded: {qty} x {item}"


def order_recorded(args: dict[str, Any], key: str) -> Reconciled:
    """Tell whether the order of an in-doubt call was written."""
    with _connect() as conn:
        row = conn.execute("SELECT item, qty FROM chaos_orders WHERE idem_key = %s", (key,)).fetchone()
    if row is None:
        return Reconciled("absent")
    return Reconciled("done", f"order recorded: {row[1]} x {row[0]}")


def recorded_key(dsn: str, thread_id: str, tool_call_id: str) -> str:
    """Return the idempotency key the ledger recorded for a call (its turn id included)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT key FROM warden_ledger WHERE thread_id = %s AND tool_call_id = %s "
            "ORDER BY started_at DESC LIMIT 1",
            (thread_id, tool_call_id),
        ).fetchone()
    assert row is not None, f"no ledger row for {thread_id} {tool_call_id}"
    return str(row[0])
