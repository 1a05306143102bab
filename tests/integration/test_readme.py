"""The README's examples work as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from graph.hitl import response_schema
from graph.settings import load_config_file
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def block(language: str, after: str) -> str:
    """Return the first fenced block of `language` after the heading `after`."""
    section = README[README.index(after) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def test_embedding_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "embed.py"
    script.write_text(block("python", "## Embedding"))
    env = {**os.environ, "WARDEN_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    env.pop("WARDEN_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    reason, tool_calls, *answer = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert (reason, tool_calls) == ("completed", "1")
    assert "README.md" in answer[0]


def test_config_example_is_valid_and_matches_the_bundled_file(tmp_path: Path) -> None:
    config = tmp_path / "warden.toml"
    config.write_text(block("toml", "## Configuration"))
    parsed = load_config_file(config)
    bundled = load_config_file(REPO / "warden.example.toml")
    assert parsed.context_fields() == bundled.context_fields()
    fields = parsed.context_fields()
    assert fields["max_tool_calls_per_tool"] == {"send_email": 2}
    assert fields["prices"]["my-local-model"].input_per_mtok == 0.0


def test_decisions_example_validates_against_a_matching_request() -> None:
    doc = json.loads(block("json", "A decisions file"))
    names = ["send_email", "send_email", "send_email", "send_email"]
    calls = [
        {"id": f"c{i}", "name": n, "args": {}, "tier": "irreversible", "reasoning": ""}
        for i, n in enumerate(names)
    ]
    from tools.builtin import SendEmailArgs

    parsed = response_schema(calls, {"send_email": SendEmailArgs}).model_validate(doc)
    assert [d.type for d in parsed.decisions] == ["approve", "edit", "reject", "respond"]
    assert parsed.reviewer == "alice"


def test_tools_and_policy_config_example_is_valid(tmp_path: Path) -> None:
    config = tmp_path / "warden.toml"
    config.write_text(block("toml", "### Policy file and profiles"))
    parsed = load_config_file(config)
    assert parsed.policy_file == tmp_path / "policy.example.toml"
    assert parsed.profile == "support"
    assert [e.path for e in parsed.tool_entries] == ["mypkg.tools:lookup_order"]
    assert parsed.email is not None and parsed.email.password_env == "SMTP_PASSWORD"
    assert parsed.sql is not None and parsed.http.allow_hosts == ["docs.example.com"]


def test_context_and_memory_config_examples_load(tmp_path: Path) -> None:
    from graph.context import Context

    path = tmp_path / "warden.toml"
    path.write_text(block("toml", "### What the model sees") + block("toml", "### Long-term memory"))
    ctx = Context(**load_config_file(path).context_fields())
    assert (ctx.context_budget_tokens, ctx.summary_model) == (32000, "openai:gpt-4o-mini")
    assert ctx.memory_embeddings == "openai:text-embedding-3-small"
