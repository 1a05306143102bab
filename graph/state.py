"""The checkpointed state of a Warden run.

This module sits at the bottom of the project: it imports nothing from `graph`,
`nodes`, `tools` or `checkpoints`, so every layer can import it.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, cast

from langchain_core.messages import AnyMessage, BaseMessage, RemoveMessage
from langgraph.channels import DeltaChannel
from langgraph.graph.message import Messages, add_messages
from langgraph.types import Overwrite
from typing_extensions import TypedDict

HaltReason = Literal[
    "completed",
    "max_steps",
    "max_tool_calls",
    "max_tokens",
    "max_cost",
    "max_seconds",
    "loop",
    "rejected",
    "global_budget",
    "cancelled",
    "error",
]
HALT_REASONS: tuple[HaltReason, ...] = HaltReason.__args__  # type: ignore[attr-defined]


def add_messages_batch(current: list[AnyMessage], batches: Sequence[Messages]) -> list[AnyMessage]:
    """Fold a batch of message writes into the history, as `add_messages` would one by one.

    Replaying a long thread hands over hundreds of batches; folding them one by one
    re-indexes the whole history each time (quadratic). Without removals, one
    `add_messages` call over the concatenation gives the same list (a repeated id
    replaces in place either way), so that case takes a single linear pass.
    """
    flat = [m for batch in batches for m in (batch if isinstance(batch, list) else [batch])]
    if all(isinstance(m, BaseMessage) and not isinstance(m, RemoveMessage) for m in flat):
        return cast(list[AnyMessage], add_messages(cast(Messages, current), flat))
    for batch in batches:
        current = cast(list[AnyMessage], add_messages(cast(Messages, current), batch))
    return current


# Updates (about two per tool call) between full snapshots of `messages`. Each snapshot
# stores the whole history again, so snapshots cost O(n^2 / every) bytes; between them a
# load replays the writes since the last one, linear in `every`. LangGraph's default
# (100) made snapshots 2/3 of a 500-call thread's bytes; at 2000 a thread of up to
# ~1000 tool calls stores none, and a load replays at most 2000 write rows in one query.
MESSAGE_SNAPSHOT_EVERY = 2000


class Usage(TypedDict):
    """What one run has consumed; every budget is checked against these counters."""

    steps: int
    """Graph node executions in this run."""
    model_calls: int
    """Model calls in this run (the `max_steps` budget)."""
    tool_calls: int
    """Tool calls dispatched in this run (including ones whose arguments failed
    validation); calls refused by policy, loop detection or an open circuit excluded."""
    tool_calls_by_name: dict[str, int]
    """Tool calls started, per tool name."""
    input_tokens: int
    """Prompt tokens reported by the model (or estimated)."""
    output_tokens: int
    """Completion tokens reported by the model (or estimated)."""
    cost_usd: float
    """Cost from the price table."""
    active_seconds: float
    """Time spent inside nodes; time waiting for a human is not counted."""
    last_input_tokens: int
    """Prompt size of the latest model call, used to project the next call."""
    rejections: int
    """Tool calls rejected by a reviewer in this run."""
    node_seconds: NotRequired[dict[str, float]]
    """Active time per node name (absent in runs checkpointed before it existed)."""
    model_seconds: NotRequired[float]
    """Time spent waiting for model responses."""
    tool_seconds: NotRequired[float]
    """Time spent executing tools."""
    by_model: NotRequired[dict[str, dict[str, float]]]
    """Per model name: `calls`, `input_tokens`, `output_tokens`, `cost_usd`."""
    last_prompt_tokens: int
    """Size of the latest prompt Warden assembled (counted before the call)."""
    peak_prompt_tokens: int
    """Largest prompt Warden assembled in this run."""
    summary_calls: int
    """Calls to the summary model (their tokens and cost are in the totals above)."""


def empty_usage() -> Usage:
    """Return zeroed usage counters."""
    return Usage(
        steps=0,
        model_calls=0,
        tool_calls=0,
        tool_calls_by_name={},
        input_tokens=0,
        output_tokens=0,
        cost_usd=0.0,
        active_seconds=0.0,
        last_input_tokens=0,
        rejections=0,
        node_seconds={},
        model_seconds=0.0,
        tool_seconds=0.0,
        by_model={},
        last_prompt_tokens=0,
        peak_prompt_tokens=0,
        summary_calls=0,
    )


def _summed(current: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Add `delta` into a copy of `current`, key by key; nested mappings are summed too."""
    merged = dict(current)
    for key, value in delta.items():
        if isinstance(value, Mapping):
            merged[key] = _summed(merged.get(key) or {}, value)
        else:
            merged[key] = merged.get(key, 0) + value
    return merged


# The form usage deltas are stored in (`compact_usage`, applied by WardenSaver's
# `aput_writes`): every super-step stores one, so they carry short keys, and leave out
# what follows from the rest. Nodes write, and streams show, the long form.
USAGE_SHORT = {
    "steps": "s",
    "active_seconds": "a",
    "node_seconds": "n",
    "model_calls": "mc",
    "tool_calls": "tc",
    "tool_calls_by_name": "tn",
    "input_tokens": "i",
    "output_tokens": "o",
    "cost_usd": "c",
    "last_input_tokens": "li",
    "rejections": "r",
    "model_seconds": "ms",
    "tool_seconds": "ts",
    "by_model": "b",
    "last_prompt_tokens": "lp",
    "peak_prompt_tokens": "pp",
    "summary_calls": "sc",
}
USAGE_LONG = {short: long for long, short in USAGE_SHORT.items()}
MODEL_FIELDS = ("calls", "input_tokens", "output_tokens", "cost_usd")
"""A `by_model` entry with exactly these keys is written as a list of their values."""
MODEL_TOTALS = ("model_calls", "input_tokens", "output_tokens", "cost_usd")
"""The counters that total `MODEL_FIELDS` over the models."""


def _derived(delta: Mapping[str, Any]) -> dict[str, Any]:
    """Return the fields a delta's other fields imply: a node execution's step and time
    (from `node_seconds`), model call totals (from `by_model`), tool calls (from
    `tool_calls_by_name`) and the peak prompt (from `last_prompt_tokens`)."""
    derived: dict[str, Any] = {}
    if nodes := delta.get("node_seconds"):
        derived["steps"] = len(nodes)
        derived["active_seconds"] = sum(nodes.values())
    if models := delta.get("by_model"):
        for field, total in zip(MODEL_FIELDS, MODEL_TOTALS, strict=True):
            derived[total] = sum(entry.get(field, 0) for entry in models.values())
    if by_name := delta.get("tool_calls_by_name"):
        derived["tool_calls"] = sum(by_name.values())
    if "last_prompt_tokens" in delta:
        derived["peak_prompt_tokens"] = delta["last_prompt_tokens"]
    return derived


def compact_usage(delta: Mapping[str, Any]) -> dict[str, Any]:
    """Return a usage delta in the form it is stored: short keys (`USAGE_SHORT`), a
    `by_model` entry as a list (`MODEL_FIELDS`), and without the fields `_derived`
    gives back exactly (a derivable field the delta lacks is written as 0).

    `expand_usage` is the inverse; `merge_usage` (so the channel's reducer) and
    `usage_spent` read both forms, so the deltas of older threads still add up.
    """
    derived = _derived(delta)
    out: dict[str, Any] = {}
    for key, value in delta.items():
        if key in derived and type(derived[key]) is type(value) and derived[key] == value:
            continue
        if key == "by_model":
            value = {
                model: [entry[f] for f in MODEL_FIELDS] if tuple(entry) == MODEL_FIELDS else entry
                for model, entry in value.items()
            }
        out[USAGE_SHORT.get(key, key)] = value
    for key, value in derived.items():
        if key not in delta:
            out[USAGE_SHORT[key]] = type(value)(0)
    return out


def expand_usage(written: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return a usage delta with long keys and its derived fields (`compact_usage`);
    a delta in the long form (older threads, counters) is returned as is."""
    if USAGE_LONG.keys().isdisjoint(written):  # one C-level pass: called per reducer step
        return written
    delta: dict[str, Any] = {}
    for key, value in written.items():
        key = USAGE_LONG.get(key, key)
        if key == "by_model":
            value = {
                model: dict(zip(MODEL_FIELDS, entry, strict=True)) if isinstance(entry, list) else entry
                for model, entry in value.items()
            }
        delta[key] = value
    return _derived(delta) | delta


def merge_usage(current: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a usage delta to `current` (counters or another delta), returning a new dict.

    Counters add up, `last_*` sizes take the newer value and `peak_prompt_tokens` the
    larger one, so applying two deltas in turn equals applying their merge. Either may
    be in the compact form (`compact_usage`); the result is in the long one.
    """
    base = dict(expand_usage(current))
    delta = expand_usage(delta)
    for key, value in delta.items():
        if key in ("last_input_tokens", "last_prompt_tokens"):
            base[key] = value
        elif key == "peak_prompt_tokens":
            base[key] = max(base.get(key, 0), value)
        elif isinstance(value, Mapping):
            base[key] = _summed(base.get(key) or {}, value)
        else:
            base[key] = base.get(key, 0) + value
    return base


def add_usage(current: Mapping[str, Any] | None, delta: Mapping[str, Any]) -> Usage:
    """Add a partial usage delta to the counters (zero ones if none), returning a new dict."""
    return merge_usage(current or empty_usage(), delta)  # type: ignore[return-value]


def add_usage_batch(current: Usage, deltas: Sequence[Mapping[str, Any]]) -> Usage:
    """Fold a batch of usage deltas into the counters (the `usage` channel's reducer).

    Nodes write what they added, not the whole counters: a whole copy per super-step
    was most of what a run stored besides its messages. A left fold is
    batching-invariant, as `DeltaChannel` requires.
    """
    for delta in deltas:
        current = add_usage(current, delta)
    return current


def usage_after(before: Mapping[str, Any] | None, written: Any) -> Usage:
    """Return the counters after a node's `usage` write: a delta, or an `Overwrite`
    with the whole counters when the node started a new run."""
    if isinstance(written, Overwrite):
        return cast(Usage, written.value)
    return add_usage(before, written or {})


def usage_spent(written: Any) -> Mapping[str, Any]:
    """Return what a node's `usage` write added (a new run's `Overwrite` starts from zero)."""
    if isinstance(written, Overwrite):
        return cast(Mapping[str, Any], written.value)
    return expand_usage(cast(Mapping[str, Any], written or {}))


# Updates between full snapshots of `usage` (about three per tool call) and `loop`
# (about one). A snapshot stores the whole value (~0.5 KB); a load replays at most
# this many small deltas since the last one.
USAGE_SNAPSHOT_EVERY = 100
LOOP_SNAPSHOT_EVERY = 100


class LoopState(TypedDict):
    """Sliding windows of recent activity and the loop detector's strikes."""

    calls: list[str]
    """Fingerprints of recent tool calls (name + canonical arguments), oldest first."""
    errors: list[str]
    """Fingerprints of recent tool errors."""
    observations: list[str]
    """Fingerprints of recent tool results."""
    strikes: int
    """Loops detected so far in this run; the first gets a corrective message."""
    last: str | None
    """Description of the latest detection."""


def empty_loop_state() -> LoopState:
    """Return a loop state with nothing seen yet."""
    return LoopState(calls=[], errors=[], observations=[], strikes=0, last=None)


class LoopUpdate(TypedDict, total=False):
    """What a node changes in the loop state: `loop` is a delta channel of these."""

    calls: list[str]
    """Call fingerprints to append to the window."""
    errors: list[str]
    """Error fingerprints to append."""
    observations: list[str]
    """Result fingerprints to append."""
    keep: int
    """Window size: after appending, each window keeps its newest `keep` items."""
    strikes: int
    """New strike count."""
    last: str | None
    """New description of the latest detection."""


WINDOWS = ("calls", "errors", "observations")


def add_loop_batch(current: LoopState, updates: Sequence[LoopUpdate]) -> LoopState:
    """Fold loop updates into the state (the `loop` channel's reducer).

    Each update carries only the fingerprints it appends, not the windows: a left fold,
    so batching-invariant, and trimming to the newest `keep` after each append equals
    trimming once after all of them.
    """
    state: dict[str, Any] = {**empty_loop_state(), **current}
    for update in cast(Sequence[Mapping[str, Any]], updates):
        keep = update.get("keep")
        for name in WINDOWS:
            added = update.get(name) or []
            if added or keep is not None:
                window = [*state[name], *added]
                state[name] = window[max(len(window) - keep, 0) :] if keep is not None else window
        state |= {name: update[name] for name in ("strikes", "last") if name in update}
    return cast(LoopState, state)


class StopSignal(TypedDict):
    """A node's request to end the run for a reason that is not a budget."""

    reason: HaltReason
    """Halt reason to record."""
    detail: str
    """Human-readable explanation."""


class ApprovalRecord(TypedDict):
    """One human decision on one tool call."""

    tool_call_id: str
    """The call decided on."""
    tool: str
    """Tool name as requested by the model."""
    decision: Literal["approve", "edit", "reject", "respond"]
    """What the reviewer decided."""
    args: dict[str, Any]
    """Arguments approved for execution (edited ones for `edit`)."""
    args_hash: str
    """Hash of the canonical approved arguments; `act` refuses anything else."""
    reviewer: str
    """Who decided."""
    message: str | None
    """Rejection message or human response, when given."""
    decided_at: str
    """ISO-8601 timestamp."""
    in_doubt_attempt: NotRequired[int]
    """Set on a decision about an in-doubt call: the ledger attempt it lets run again."""


class InDoubtRecord(TypedDict):
    """A tool call that started but whose outcome was never recorded (the process died).

    `act` records it instead of running the call again blindly; `approve` asks a human.
    """

    tool_call_id: str
    """The call in doubt."""
    tool: str
    """Tool name."""
    attempt: int
    """The ledger's attempt number of the unfinished execution."""
    started_at: str
    """When that attempt started (ISO-8601)."""
    detail: str
    """What is known, for the reviewer."""


class State(TypedDict):
    """Everything a run needs to resume exactly where it stopped."""

    messages: Annotated[
        list[AnyMessage], DeltaChannel(add_messages_batch, snapshot_frequency=MESSAGE_SNAPSHOT_EVERY)
    ]
    """The conversation: human task(s), model turns and tool results."""
    task: str | None
    """Input slot for a new task; `plan` moves it into `messages` and clears it."""
    objective: str
    """The current run's task text (the latest human instruction)."""
    usage: Annotated[Usage, DeltaChannel(add_usage_batch, snapshot_frequency=USAGE_SNAPSHOT_EVERY)]
    """Counters for the current run. Nodes write deltas (`add_usage_batch`); a new run
    writes `Overwrite(counters)`."""
    loop: Annotated[LoopState, DeltaChannel(add_loop_batch, snapshot_frequency=LOOP_SNAPSHOT_EVERY)]
    """Loop detector windows and strikes. Nodes write `LoopUpdate`s; a new run writes
    `Overwrite(empty_loop_state())`."""
    approvals: Annotated[list[ApprovalRecord], operator.add]
    """Every human decision on this thread, in order."""
    budget_warnings: Annotated[list[str], operator.add]
    """Soft-threshold and configuration warnings recorded during runs."""
    stop: StopSignal | None
    """Set by a node that wants the run to end (error, rejection, cancellation)."""
    halt_reason: HaltReason | None
    """Why the latest run ended; None while a run is in progress."""
    halt_detail: str | None
    """Explanation of the halt reason."""
    final_answer: str | None
    """The model's final answer for a completed run."""
    report: dict[str, Any] | None
    """End-of-run report written by `halt`."""
    run_context: dict[str, Any] | None
    """The Context the current run started with; a resume continues under it."""
    run_id: str
    """Identifier of the current run on this thread (new at each run start); audit events carry it."""
    data_nonce: str
    """Unguessable per-run delimiter that fences untrusted tool output for the model."""
    tainted: bool
    """True once the run has seen instruction-like content in untrusted data."""
    flags: Annotated[list[dict[str, Any]], operator.add]
    """Injection and policy flags recorded during runs (what, where, why)."""
    in_doubt: Annotated[list[InDoubtRecord], operator.add]
    """Tool calls found in doubt after a crash, each awaiting a human decision."""
    summaries: Annotated[list[dict[str, Any]], operator.add]
    """Summaries of older work shown to the model in place of it: `text`, `covers` (ids of
    the first and last message summarised), `steps`, `tokens`, the summary model's usage."""


class InputState(TypedDict):
    """What callers send to start a run: a task, or chat messages (latest human one wins)."""

    task: NotRequired[str]
    """The task text."""
    messages: NotRequired[Messages]
    """Chat-style input, as Studio and Agent Chat UI send it."""
