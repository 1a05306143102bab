"""A tool that holds a run mid-call until the test opens a gate (a file), loaded by
`[[tools]]` from a config file.

Tests that need a run provably busy while something else happens (a cancel request
landing, another process looking at the thread) hold it here instead of guessing with
model delays, which a loaded machine can outlast.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

GATE_ENV = "WARDEN_TEST_GATE"
GATE_WAIT_S = 120.0


def reached(gate: Path) -> Path:
    """The file the tool creates when it starts waiting at `gate`."""
    return gate.with_name(gate.name + ".reached")


def wait_for_gate(label: str) -> str:
    """Wait until the operator opens the gate, then say so."""
    gate = Path(os.environ[GATE_ENV])
    reached(gate).touch()
    deadline = time.monotonic() + GATE_WAIT_S
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.02)
    return f"gate {label} open"


def wait_at_gate(gate: Path, proc: subprocess.Popen[Any]) -> None:
    """Wait until the run in `proc` is inside its gated tool call."""
    deadline = time.monotonic() + 90
    while not reached(gate).exists():
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run never reached the gate"
        time.sleep(0.05)
