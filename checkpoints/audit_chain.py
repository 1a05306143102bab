"""The audit log's hash chain and its signed anchors, as pure functions (no database).

Each audit event stores the previous event's hash and the SHA-256 of its own canonical
JSON (the event's fields with that `prev_hash`), so changing, deleting, reordering or
inserting an event breaks the chain at that point. A chain alone cannot show that its
tail was cut off, nor that someone rewrote it from some event onwards and re-hashed the
rest: an anchor is a set of chain heads (thread, seq, hash) signed with HMAC-SHA256
under a key the database does not hold, kept elsewhere; `verify_chain` checks a thread's
events against it.

The hashed form is exactly what the table stores: `prepare_payload` rounds the payload
through JSON before hashing (tuples become lists, unknown objects strings, NUL characters
that `jsonb` refuses are replaced), so a hash recomputed from the stored row matches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from graph.loops import canonical_json

GENESIS = "0" * 64
"""`prev_hash` of a thread's first event."""

EVENT_FIELDS = ("thread_id", "run_id", "seq", "at", "node", "kind", "payload", "prev_hash")
"""The fields an event's hash covers, in the order `warden audit export` writes them."""

ANCHOR_VERSION = 1


def _jsonable(value: Any) -> Any:
    """Replace what `jsonb` cannot hold faithfully: NUL characters, lone surrogates, NaN
    and infinities.

    A large whole float (`1e+16` and up) is written as the integer it equals, and
    `-0.0` as `0.0`: `jsonb` would read them back that way, and an event's canonical
    JSON must not change on the way.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e16:
        return int(value)
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, Mapping):
        return {str(k).replace("\x00", "\ufffd"): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def prepare_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Return the payload as it will read back from `jsonb`, ready to be hashed."""
    prepared: dict[str, Any] = json.loads(canonical_json(_jsonable(dict(payload))))
    return prepared


def format_at(at: datetime) -> str:
    """Render an event time the one way the hash uses (UTC, ISO-8601, microseconds)."""
    return at.astimezone(UTC).isoformat()


def event_hash(event: Mapping[str, Any]) -> str:
    """Return the SHA-256 of an event's canonical JSON (its `EVENT_FIELDS`)."""
    body = {field: event[field] for field in EVENT_FIELDS}
    if isinstance(body["at"], datetime):
        body["at"] = format_at(body["at"])
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True)
class Base:
    """Where a thread's stored chain starts: genesis, or the head a retention purge removed."""

    seq: int
    """Seq of the last event before the stored ones (0 at genesis)."""
    hash: str
    """Hash of that event (`GENESIS` at genesis)."""


GENESIS_BASE = Base(0, GENESIS)


@dataclass(frozen=True)
class Finding:
    """The first thing wrong with a thread's audit trail."""

    seq: int | None
    """The event where the chain breaks (None when the problem is not one event)."""
    problem: str
    """What is wrong, in one line."""


def verify_chain(
    rows: Sequence[Mapping[str, Any]],
    base: Base = GENESIS_BASE,
    anchor_head: Mapping[str, Any] | None = None,
) -> Finding | None:
    """Recompute a thread's chain (rows ordered by seq) and return the first break, or None.

    `base` is where the stored chain starts (after a retention purge, the head it
    removed). `anchor_head` is this thread's head from an authentic anchor (`seq`,
    `hash`): the chain must still hold that event unchanged, or the purge that removed
    it must have recorded its hash.
    """
    expected_seq, expected_prev = base.seq + 1, base.hash
    by_seq: dict[int, str] = {}
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            what = "missing (deleted?)" if seq > expected_seq else "duplicated"
            return Finding(
                expected_seq if seq > expected_seq else seq,
                f"expected seq {expected_seq}, found seq {seq}: event(s) {what}",
            )
        if row["prev_hash"] != expected_prev:
            return Finding(
                seq,
                f"prev_hash {str(row['prev_hash'])[:12]}… does not match the hash of the "
                f"previous event {expected_prev[:12]}… (an event before it was removed or "
                "replaced)",
            )
        recomputed = event_hash(row)
        if recomputed != row["hash"]:
            return Finding(
                seq,
                f"stored hash {str(row['hash'])[:12]}… does not match the event's content "
                f"{recomputed[:12]}… (a field was changed)",
            )
        by_seq[seq] = recomputed
        expected_seq, expected_prev = seq + 1, recomputed
    if anchor_head is None:
        return None
    anchored_seq, anchored_hash = int(anchor_head["seq"]), str(anchor_head["hash"])
    last = expected_seq - 1
    if anchored_seq > last:
        return Finding(
            None,
            f"tail cut off: the anchor records seq {anchored_seq}, the chain ends at seq {last}",
        )
    if anchored_seq == base.seq and base.seq > 0:
        stored = base.hash
    elif anchored_seq < base.seq:
        return None  # purged by retention, which recorded the later head
    else:
        stored = by_seq[anchored_seq]
    if stored != anchored_hash:
        return Finding(
            anchored_seq,
            f"hash differs from the anchor ({stored[:12]}… vs {anchored_hash[:12]}…): "
            "history up to this event was rewritten",
        )
    return None


# --- anchors ---------------------------------------------------------------------


def _signature(key: bytes, body: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical_json(body).encode(), hashlib.sha256).hexdigest()


def sign_anchor(key: bytes, heads: Iterable[Mapping[str, Any]], created_at: datetime) -> dict[str, Any]:
    """Return an anchor: chain heads (thread_id, seq, hash, at) and their HMAC-SHA256."""
    body: dict[str, Any] = {
        "version": ANCHOR_VERSION,
        "created_at": format_at(created_at),
        "heads": [
            {
                "thread_id": h["thread_id"],
                "seq": int(h["seq"]),
                "hash": h["hash"],
                "at": format_at(h["at"]) if isinstance(h["at"], datetime) else h["at"],
            }
            for h in heads
        ],
    }
    return {**body, "signature": _signature(key, body)}


def anchor_is_authentic(key: bytes, anchor: Mapping[str, Any]) -> bool:
    """Tell whether an anchor's signature matches its content under `key`."""
    body = {k: v for k, v in anchor.items() if k != "signature"}
    return hmac.compare_digest(_signature(key, body), str(anchor.get("signature", "")))


def latest_head(anchors: Sequence[Mapping[str, Any]], thread_id: str) -> Mapping[str, Any] | None:
    """Return the thread's head in the latest anchor that lists it."""
    for anchor in reversed(anchors):
        for head in anchor.get("heads") or ():
            if head.get("thread_id") == thread_id:
                return dict(head)
    return None
