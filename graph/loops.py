"""Loop detection over fingerprints of recent tool calls, errors and observations.

Pure functions: `plan`'s router checks proposed calls before they run, `observe`
checks errors and results after they come back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def canonical_json(value: Any) -> str:
    """Serialise a value deterministically: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def args_hash(args: Any) -> str:
    """Return the SHA-256 of canonical arguments."""
    return hashlib.sha256(canonical_json(args).encode()).hexdigest()


def fingerprint(*parts: Any) -> str:
    """Return a short stable fingerprint of the parts."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]


def call_fingerprint(name: str, args: Any) -> str:
    """Fingerprint a tool call by name and canonicalised arguments."""
    return fingerprint("call", name, args)


def repeated(items: Sequence[str], threshold: int) -> bool:
    """Tell whether the newest item occurs at least `threshold` times in the window."""
    return bool(items) and items.count(items[-1]) >= threshold


def cycle(items: Sequence[str], repeats: int) -> int | None:
    """Return the period of a cycle (length >= 2) that the newest items repeat, if any."""
    for period in range(2, len(items) // repeats + 1):
        tail = list(items[-period * repeats :])
        unit = tail[-period:]
        if len(set(unit)) > 1 and tail == unit * repeats:
            return period
    return None


def detect_call_loop(
    calls: Sequence[str], *, repeat_threshold: int, cycle_repeats: int
) -> str | None:
    """Describe a loop that the newest call completes, or return None."""
    if repeated(calls, repeat_threshold):
        count = calls.count(calls[-1])
        return f"the same tool call with the same arguments was made {count} times"
    period = cycle(calls, cycle_repeats)
    if period is not None:
        return f"a cycle of {period} tool calls repeated {cycle_repeats} times"
    return None


def detect_proposed_loop(
    window: Sequence[str],
    proposed: Sequence[str],
    *,
    repeat_threshold: int,
    cycle_repeats: int,
) -> str | None:
    """Check each proposed call in order as if it were the newest one."""
    seen = list(window)
    for fp in proposed:
        seen.append(fp)
        found = detect_call_loop(
            seen, repeat_threshold=repeat_threshold, cycle_repeats=cycle_repeats
        )
        if found:
            return found
    return None


def push(window: Sequence[str], new: Sequence[str], size: int) -> list[str]:
    """Append to a sliding window, keeping the newest `size` items."""
    return [*window, *new][-size:]
