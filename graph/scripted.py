"""The scripted model: replays a JSON script of model turns, offline.

Used by tests, benchmarks and the demo. Script format (a contract, other tools write
these files):

    {"model": "gpt-4o-mini",
     "turns": [{"content": "...",
                "tool_calls": [{"name": "...", "args": {...}}],
                "usage": {"input_tokens": 100, "output_tokens": 20}}]}

`model` names the price-table entry. In a turn, `content`, `tool_calls` and `usage`
are optional (usage is estimated when absent). Extensions: a tool call may carry an
`id`; `args` given as a string is parsed like a provider's raw JSON (invalid JSON
becomes a malformed tool call); `delay_seconds` simulates model latency.

The turn to replay is the number of model turns already in the conversation (passed
by `plan` as `warden_turn` metadata), so a run resumed in a new process continues
where the script left off: nothing lives only in process memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graph.errors import ConfigError, ScriptExhaustedError, error_location

MAX_SCRIPT_BYTES = 64 * 1024 * 1024


class ScriptUsage(BaseModel):
    """Token usage of one scripted turn."""

    model_config = ConfigDict(extra="forbid")
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


class ScriptToolCall(BaseModel):
    """One tool call in a scripted turn."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    args: dict[str, Any] | str = Field(default_factory=dict)
    id: str | None = None


class ScriptTurn(BaseModel):
    """One model turn."""

    model_config = ConfigDict(extra="forbid")
    content: str = ""
    tool_calls: list[ScriptToolCall] = Field(default_factory=list)
    usage: ScriptUsage | None = None
    delay_seconds: float = Field(default=0.0, ge=0, le=600)


class Script(BaseModel):
    """A whole script."""

    model_config = ConfigDict(extra="forbid")
    model: str = "scripted"
    turns: list[ScriptTurn]


def load_script(path: str | Path) -> Script:
    """Read and validate a script file, with a one-line error for anything wrong."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_SCRIPT_BYTES:
            raise ConfigError(f"script {file} is larger than {MAX_SCRIPT_BYTES} bytes")
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"script file not found: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read script {file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"script {file} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    try:
        return Script.model_validate(raw)
    except ValidationError as exc:
        where, msg = error_location(exc)
        raise ConfigError(f"script {file} is malformed at {where or 'top level'}: {msg}") from None


class ScriptedChatModel(BaseChatModel):
    """A chat model that replays scripted turns; `bind_tools` returns itself."""

    # Kept out of repr: tracers record a model's repr, and the turns are data.
    script: Script = Field(repr=False)
    source: str = "<inline>"

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedChatModel:
        """Load a scripted model from a JSON file."""
        return cls(script=load_script(path), source=str(path))

    @classmethod
    def from_turns(cls, turns: list[dict[str, Any]], model: str = "scripted") -> ScriptedChatModel:
        """Build a scripted model from turns given in code."""
        return cls(script=Script.model_validate({"model": model, "turns": turns}))

    @property
    def _llm_type(self) -> str:
        return "warden-scripted"

    @property
    def model_name(self) -> str:
        """Return the price-table name, as provider chat models expose theirs."""
        return self.script.model

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # What traces record as the model's parameters: its name and file, as for a
        # provider model, not the whole script (the turns are data, like completions).
        return {"model": self.script.model, "source": self.source}

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        """Return the model itself: the script decides which tools are called."""
        return self

    def _turn_index(self, messages: list[BaseMessage], metadata: dict[str, Any] | None) -> int:
        if metadata and "warden_turn" in metadata:
            return int(metadata["warden_turn"])
        return sum(isinstance(m, AIMessage) for m in messages)

    def _delay(self, index: int) -> float:
        """Return the simulated latency of a turn (none past the end of the script)."""
        turns = self.script.turns
        return turns[index].delay_seconds if index < len(turns) else 0.0

    def _respond(self, index: int, messages: list[BaseMessage]) -> ChatResult:
        turns = self.script.turns
        if index >= len(turns):
            raise ScriptExhaustedError(
                f"scripted model ran out of turns: {self.source} has {len(turns)} "
                f"and turn {index + 1} was requested"
            )
        turn = turns[index]
        calls, invalid = [], []
        for j, call in enumerate(turn.tool_calls):
            call_id = call.id or f"call_{index + 1}_{j + 1}"
            args: Any = call.args
            if isinstance(call.args, str):
                raw = call.args
                try:
                    args = json.loads(raw)
                except json.JSONDecodeError as exc:
                    invalid.append(
                        invalid_tool_call(name=call.name, args=raw, id=call_id, error=exc.msg)
                    )
                    continue
                if not isinstance(args, dict):
                    invalid.append(
                        invalid_tool_call(
                            name=call.name, args=raw, id=call_id, error="args is not an object"
                        )
                    )
                    continue
            calls.append(tool_call(name=call.name, args=args, id=call_id))
        if turn.usage is not None:
            usage = turn.usage.model_dump()
        else:
            prompt = sum(len(m.text) for m in messages) // 4 + 1
            output = (len(turn.content) + len(json.dumps([c["args"] for c in calls]))) // 4 + 1
            usage = {"input_tokens": prompt, "output_tokens": output}
        message = AIMessage(
            content=turn.content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata={**usage, "total_tokens": usage["input_tokens"] + usage["output_tokens"]},
            response_metadata={"model_name": self.script.model},
            id=f"scripted-turn-{index + 1}",
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        index = self._turn_index(messages, run_manager.metadata if run_manager else None)
        if delay := self._delay(index):
            time.sleep(delay)
        return self._respond(index, messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        index = self._turn_index(messages, run_manager.metadata if run_manager else None)
        if delay := self._delay(index):
            await asyncio.sleep(delay)
        return self._respond(index, messages)
