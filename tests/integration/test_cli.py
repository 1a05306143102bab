"""Black-box tests of the `warden` command line: real subprocesses on a real Postgres.

Each test runs the installed `warden` executable with WARDEN_DATABASE_URL pointing at
this module's database and WARDEN_DATA_DIR at a temporary directory; the model is a
scripted one written to a file. Exit codes, the `--json` contract, stderr and the
rows in Postgres are what is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from graph.pricing import DEFAULT_PRICES, cost_usd
from tests.conftest import call, turn

WARDEN = Path(sys.executable).parent / "warden"

JSON_KEYS = {
    "thread_id",
    "status",
    "halt_reason",
    "halt_detail",
    "final_answer",
    "usage",
    "budgets",
    "pending_approval",
    "warnings",
    "report",
}
USAGE_KEYS = {
    "steps",
    "model_calls",
    "tool_calls",
    "tool_calls_by_name",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "active_seconds",
    "last_prompt_tokens",
    "peak_prompt_tokens",
    "summary_calls",
}
BUDGET_KEYS = {"max_steps", "max_tool_calls", "max_tokens", "max_cost", "max_seconds"}


@dataclass
class Result:
    """What one `warden` invocation did."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.out.strip(), f"no JSON on stdout: {self}"
        return json.loads(self.out)

    def __str__(self) -> str:
        return (
            f"warden {' '.join(self.args)} -> {self.code}\nstdout: {self.out}\nstderr: {self.err}"
        )


@dataclass
class Cli:
    """Runs `warden` as a subprocess with a fixed environment."""

    env: dict[str, str]
    cwd: Path
    data_dir: Path
    database_url: str

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        env: dict[str, str | None] | None = None,
        timeout: float = 90,
    ) -> Result:
        full_env = dict(self.env)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        proc = subprocess.run(
            [str(WARDEN), *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=self.cwd,
            timeout=timeout,
        )
        result = Result(args, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in result.err, str(result)
        return result

    def ok_json(self, *args: str, code: int, **kwargs: Any) -> dict[str, Any]:
        """Run with --json, check the exit code and return the parsed object."""
        result = self(*args, "--json", **kwargs)
        assert result.code == code, str(result)
        return result.json()

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox" / "outbox.jsonl"

    def emails(self) -> list[dict[str, Any]]:
        if not self.outbox.exists():
            return []
        return [json.loads(line) for line in self.outbox.read_text().splitlines()]

    def checkpoint_count(self, thread_id: str) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)
            ).fetchone()
        assert row is not None
        return int(row[0])


def concurrently(*work: Callable[[], Result]) -> list[Result]:
    """Run independent invocations side by side (each is a separate process)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda thunk: thunk(), work))


def one_line_error(result: Result, code: int = 2, *needles: str) -> str:
    """Assert the invocation failed with `code` and exactly one error line on stderr."""
    assert result.code == code, str(result)
    assert "Traceback" not in result.err, str(result)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, str(result)
    line = lines[0]
    assert line.startswith("error:"), str(result)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def make_cli(database_url: str, data: Path, cwd: Path) -> Cli:
    env = dict(os.environ)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WARDEN_MODEL", "WARDEN_OPENAI_API_KEY"):
        env.pop(var, None)
    env |= {
        "WARDEN_DATABASE_URL": database_url,
        "WARDEN_DATA_DIR": str(data),
        "LANGSMITH_TRACING": "false",
        "USER": "tester",
    }
    return Cli(env=env, cwd=cwd, data_dir=data, database_url=database_url)


@pytest.fixture
def cli(database_url: str, tmp_path: Path, workspace: Path) -> Cli:
    return make_cli(database_url, tmp_path / "data", workspace)


EMAIL_TURNS = [
    turn("reading the notes", call("read_file", path="notes.txt")),
    turn(
        "emailing the summary",
        call("send_email", to="ops@example.com", subject="notes", body="alpha beta"),
    ),
    turn("all done"),
]
AWAITING = (
    "no_input", "reviewer", "reject", "reject_mid", "reject_last",
    "edit", "stdin", "malformed", "errors", "cancel",
)  # fmt: skip


@pytest.fixture(scope="module")
def awaiting(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Threads stopped at the send_email approval, one per test, started side by side.

    Each is a `warden run --no-input --json` that read notes.txt and exited 4; the value
    is its JSON. The runs' own outbox is not used: tests resume with their own data dir.
    """
    root = tmp_path_factory.mktemp("awaiting")
    ws = root / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("alpha\nbeta\n")
    script = root / "email.json"
    script.write_text(json.dumps({"model": "gpt-4o-mini", "turns": EMAIL_TURNS}))
    starter = make_cli(database_url, root / "data", ws)
    args = ["run", "summarise and email", "--model", f"scripted:{script}"]
    args += ["--workspace", str(ws), "--no-input", "--json"]
    results = concurrently(*(lambda: starter(*args) for _ in AWAITING))
    started = {}
    for name, result in zip(AWAITING, results, strict=True):
        assert result.code == 4, str(result)
        started[name] = result.json()
        assert started[name]["status"] == "awaiting_approval"
    assert not (root / "data" / "outbox").exists()  # nothing is sent before approval
    return started


@pytest.fixture
def email_script(write_script: Callable[..., Path]) -> Path:
    """Read a file, ask to send an email (needs approval), then answer."""
    return write_script(EMAIL_TURNS)


def price(input_tokens: int, output_tokens: int) -> float:
    return cost_usd(DEFAULT_PRICES["gpt-4o-mini"], input_tokens, output_tokens)


# --- run: the --json contract and exit codes ---------------------------------------


def test_run_json_contract_completed(cli: Cli, write_script, workspace: Path) -> None:
    script = write_script(
        [
            turn("looking", call("read_file", path="notes.txt"), tokens=(120, 15)),
            turn(
                "two files", call("read_file", path="todo.md"), call("list_files"), tokens=(300, 20)
            ),
            turn("The notes say alpha and beta.", tokens=(400, 30)),
        ]
    )
    data = cli.ok_json(
        "run",
        "summarise the notes",
        "--model",
        f"scripted:{script}",
        "--workspace",
        str(workspace),
        "--max-steps",
        "7",
        "--max-tool-calls",
        "9",
        "--max-tokens",
        "50000",
        "--max-cost",
        "0.5",
        "--max-seconds",
        "120",
        code=0,
    )
    assert set(data) == JSON_KEYS
    assert data["status"] == "completed"
    assert data["halt_reason"] == "completed"
    assert data["halt_detail"]
    assert data["final_answer"] == "The notes say alpha and beta."
    assert data["pending_approval"] is None
    assert isinstance(data["warnings"], list)
    uuid.UUID(data["thread_id"])
    usage = data["usage"]
    assert USAGE_KEYS <= set(usage)
    assert usage["model_calls"] == 3
    assert usage["tool_calls"] == 3
    assert usage["tool_calls_by_name"] == {"read_file": 2, "list_files": 1}
    assert usage["input_tokens"] == 820
    assert usage["output_tokens"] == 65
    assert usage["cost_usd"] == pytest.approx(price(820, 65))
    assert usage["steps"] >= 3 + 2 * 2 + 1  # 3 plans, 2 act/observe pairs, halt
    assert 0 < usage["active_seconds"] < 60
    assert 0 < usage["last_prompt_tokens"] <= usage["peak_prompt_tokens"]
    assert usage["summary_calls"] == 0
    budgets = data["budgets"]
    assert BUDGET_KEYS <= set(budgets)
    assert budgets["max_steps"] == 7
    assert budgets["max_tool_calls"] == 9
    assert budgets["max_tokens"] == 50000
    assert budgets["max_cost"] == 0.5
    assert budgets["max_seconds"] == 120
    report = data["report"]  # where the time and money went
    assert set(report["node_seconds"]) == {"plan", "act", "observe", "halt"}
    assert sum(report["node_seconds"].values()) == pytest.approx(usage["active_seconds"], abs=1e-5)
    assert 0 < report["model_seconds"] <= report["node_seconds"]["plan"]
    assert 0 < report["tool_seconds"] <= report["node_seconds"]["act"]
    assert report["by_model"] == {
        "gpt-4o-mini": {
            "calls": 3, "input_tokens": 820, "output_tokens": 65, "cost_usd": pytest.approx(price(820, 65))
        }
    }  # fmt: skip


def test_run_without_json_prints_progress_and_summary(
    cli: Cli, write_script, workspace: Path
) -> None:
    script = write_script([turn("look", call("read_file", path="notes.txt")), turn("finished")])
    result = cli("run", "summarise", "--model", f"scripted:{script}", "--workspace", str(workspace))
    assert result.code == 0, str(result)
    assert "completed" in result.out and "finished" in result.out
    assert "model calls" in result.err  # progress lines go to stderr
    # Each line shows the run's totals after that node (nodes write usage deltas).
    lines = {line.split()[0]: line for line in result.err.splitlines() if " step " in line}
    assert "model calls 2/" in lines["halt"] and "tool calls 1/" in lines["halt"]
    assert "step   5 " in lines["halt"]


def test_budget_halt_exits_3(cli: Cli, write_script, workspace: Path) -> None:
    script = write_script(
        [
            turn("one", call("read_file", path="notes.txt")),
            turn("two", call("read_file", path="todo.md")),
            turn("done"),
        ]
    )
    data = cli.ok_json(
        "run",
        "read",
        "--model",
        f"scripted:{script}",
        "--workspace",
        str(workspace),
        "--max-steps",
        "1",
        code=3,
    )
    assert data["status"] == "halted"
    assert data["halt_reason"] == "max_steps"
    assert data["usage"]["model_calls"] == 1
    assert data["final_answer"] is None


def test_scripted_error_exits_1(cli: Cli, write_script, workspace: Path) -> None:
    script = write_script([turn("broken", {"name": "read_file", "args": '{"path": "notes.txt"'})])
    data = cli.ok_json(
        "run", "read", "--model", f"scripted:{script}", "--workspace", str(workspace), code=1
    )
    assert data["status"] == "error"
    assert data["halt_reason"] == "error"
    assert "malformed tool call" in data["halt_detail"]
    assert data["usage"]["tool_calls"] == 0


def test_script_out_of_turns_exits_1(cli: Cli, write_script, workspace: Path) -> None:
    script = write_script([turn("look", call("read_file", path="notes.txt"))])
    data = cli.ok_json(
        "run", "read", "--model", f"scripted:{script}", "--workspace", str(workspace), code=1
    )
    assert data["halt_reason"] == "error"
    assert "ran out of turns" in data["halt_detail"]
    assert data["usage"]["tool_calls"] == 1


# --- approvals ------------------------------------------------------------------------


def test_no_input_stops_at_approval_with_the_request(cli: Cli, awaiting: dict[str, Any]) -> None:
    data = awaiting["no_input"]
    assert set(data) == JSON_KEYS
    assert data["halt_reason"] is None
    request = data["pending_approval"]
    assert [a["name"] for a in request["action_requests"]] == ["send_email"]
    assert request["action_requests"][0]["args"] == {
        "to": "ops@example.com",
        "subject": "notes",
        "body": "alpha beta",
    }
    assert "emailing the summary" in request["action_requests"][0]["description"]
    config = request["review_configs"][0]
    assert config["action_name"] == "send_email"
    assert set(config["allowed_decisions"]) == {"approve", "edit", "reject", "respond"}
    assert config["args_schema"]["required"] == ["to", "subject", "body"]
    assert request["tiers"] == ["irreversible"]
    assert len(request["tool_call_ids"]) == 1
    assert data["usage"]["tool_calls_by_name"] == {"read_file": 1}
    status = cli.ok_json("status", data["thread_id"], code=4)
    assert status["status"] == "awaiting_approval"
    assert status["pending_approval"] == request


def test_approve_all_approves_with_a_warning(cli: Cli, email_script: Path, workspace: Path) -> None:
    result = cli(
        "run",
        "summarise and email",
        "--model",
        f"scripted:{email_script}",
        "--workspace",
        str(workspace),
        "--approve-all",
        "--json",
    )
    assert result.code == 0, str(result)
    data = result.json()
    assert data["status"] == "completed" and data["final_answer"] == "all done"
    assert "warning" in result.err and "--approve-all" in result.err
    assert [e["to"] for e in cli.emails()] == ["ops@example.com"]
    history = cli.ok_json("history", data["thread_id"], code=0)
    assert [a["decision"] for a in history["approvals"]] == ["approve"]
    assert history["approvals"][0]["reviewer"].endswith("(--approve-all)")


def test_resume_approve_with_reviewer(cli: Cli, awaiting: dict[str, Any]) -> None:
    thread = awaiting["reviewer"]["thread_id"]
    data = cli.ok_json("resume", thread, "--approve", "--reviewer", "alice", code=0)
    assert data["status"] == "completed"
    assert data["final_answer"] == "all done"
    assert data["usage"]["tool_calls_by_name"] == {"read_file": 1, "send_email": 1}
    assert [e["to"] for e in cli.emails()] == ["ops@example.com"]
    history = cli.ok_json("history", thread, code=0)
    [record] = history["approvals"]
    assert record["decision"] == "approve"
    assert record["reviewer"] == "alice"
    assert record["tool"] == "send_email"


def test_resume_reject_with_message(cli: Cli, awaiting: dict[str, Any]) -> None:
    thread = awaiting["reject"]["thread_id"]
    data = cli.ok_json("resume", thread, "--reject", "not to ops", "--reviewer", "bob", code=0)
    assert data["status"] == "completed"  # the model replans and answers
    assert data["usage"]["rejections"] == 1
    assert data["usage"]["tool_calls_by_name"] == {"read_file": 1}
    assert cli.emails() == []
    history = cli.ok_json("history", thread, code=0)
    [record] = history["approvals"]
    assert (record["decision"], record["message"], record["reviewer"]) == (
        "reject",
        "not to ops",
        "bob",
    )
    tool_results = [
        m for m in history["messages"] if m["type"] == "tool" and m["name"] == "send_email"
    ]
    assert len(tool_results) == 1 and "not to ops" in tool_results[0]["content"]
    assert tool_results[0]["status"] == "error"


@pytest.mark.parametrize(
    ("where", "order"),
    [("mid", ["--reject", "--json"]), ("last", ["--json", "--reject"])],
    ids=["mid", "last"],
)
def test_resume_reject_without_message(
    cli: Cli, awaiting: dict[str, Any], where: str, order: list[str]
) -> None:
    thread = awaiting[f"reject_{where}"]["thread_id"]
    result = cli("resume", thread, *order)
    assert result.code == 0, str(result)
    assert result.json()["status"] == "completed"
    history = cli.ok_json("history", thread, code=0)
    [record] = history["approvals"]
    assert record["decision"] == "reject"
    assert record["message"] is None
    assert record["reviewer"] == "cli:tester"
    [rejected] = [
        m for m in history["messages"] if m["type"] == "tool" and m["name"] == "send_email"
    ]
    assert "no reason given" in rejected["content"]
    assert cli.emails() == []


def test_resume_decisions_file_edit(cli: Cli, awaiting: dict[str, Any], tmp_path: Path) -> None:
    thread = awaiting["edit"]["thread_id"]
    decisions = tmp_path / "decisions.json"
    edited = {"to": "lead@example.com", "subject": "edited", "body": "short"}
    decisions.write_text(
        json.dumps(
            {
                "decisions": [
                    {"type": "edit", "edited_action": {"name": "send_email", "args": edited}}
                ],
                "reviewer": "carol",
            }
        )
    )
    data = cli.ok_json("resume", thread, "--decisions", str(decisions), code=0)
    assert data["status"] == "completed"
    [email] = cli.emails()
    assert (email["to"], email["subject"], email["body"]) == ("lead@example.com", "edited", "short")
    history = cli.ok_json("history", thread, code=0)
    [record] = history["approvals"]
    # `history` is a view outside the model call, so PII in it is redacted (the outbox
    # above shows the real, edited address was the one used).
    shown = {**edited, "to": "[REDACTED:email]"}
    assert (record["decision"], record["args"], record["reviewer"]) == ("edit", shown, "carol")


def test_resume_decisions_from_stdin(cli: Cli, awaiting: dict[str, Any]) -> None:
    thread = awaiting["stdin"]["thread_id"]
    doc = [{"type": "respond", "message": "I already sent it by hand"}]
    data = cli.ok_json(
        "resume", thread, "--decisions", "-", "--reviewer", "dave", stdin=json.dumps(doc), code=0
    )
    assert data["status"] == "completed"
    assert cli.emails() == []
    history = cli.ok_json("history", thread, code=0)
    [record] = history["approvals"]
    assert (record["decision"], record["reviewer"]) == ("respond", "dave")
    [answer] = [m for m in history["messages"] if m["type"] == "tool" and m["name"] == "send_email"]
    assert answer["content"] == "I already sent it by hand"


def test_malformed_decisions_leave_the_thread_unchanged(
    cli: Cli, awaiting: dict[str, Any], tmp_path: Path
) -> None:
    first = awaiting["malformed"]
    thread = first["thread_id"]
    before = cli.checkpoint_count(thread)
    bad_edit = {
        "type": "edit",
        "edited_action": {
            "name": "send_email",
            "args": {"to": "no-at-sign", "subject": "s", "body": "b"},
        },
    }
    cases = {
        "wrong count": (
            '{"decisions": [{"type": "approve"}, {"type": "approve"}]}',
            "expected 1 decision",
        ),
        "unknown type": ('[{"type": "maybe"}]', "unknown type 'maybe'"),
        "invalid edit args": (json.dumps([bad_edit]), "edit of send_email"),
        "invalid JSON": ('{"decisions": [', "not valid JSON"),
        "not an object": ('"approve"', "decisions must be"),
    }

    def attempt(name: str, text: str) -> Callable[[], Result]:
        if name == "unknown type":  # one of them through stdin
            return lambda: cli("resume", thread, "--decisions", "-", "--json", stdin=text)
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(text)
        return lambda: cli("resume", thread, "--decisions", str(path), "--json")

    results = concurrently(*(attempt(name, text) for name, (text, _) in cases.items()))
    for (name, (_, needle)), result in zip(cases.items(), results, strict=True):
        assert result.out == "", f"{name}: {result}"
        one_line_error(result, 2, needle)
    assert cli.checkpoint_count(thread) == before, "a refused resume wrote a checkpoint"
    status = cli.ok_json("status", thread, code=4)
    assert status["status"] == "awaiting_approval"
    assert status["pending_approval"] == first["pending_approval"]
    assert status["usage"] == first["usage"]
    assert cli.ok_json("history", thread, code=0)["approvals"] == []
    assert cli.emails() == []
    done = cli.ok_json("resume", thread, "--approve", code=0)
    assert done["status"] == "completed"
    assert len(cli.emails()) == 1


def test_resume_errors(cli: Cli, awaiting: dict[str, Any], tmp_path: Path) -> None:
    unknown = str(uuid.uuid4())
    thread = awaiting["errors"]["thread_id"]
    early = concurrently(
        lambda: cli("resume", unknown, "--approve"),
        lambda: cli("status", unknown),
        lambda: cli("history", unknown, "--json"),
        lambda: cli("resume", thread, "--approve", "--reject"),
    )
    for result in early[:3]:
        one_line_error(result, 2, "unknown thread")
    one_line_error(early[3], 2, "choose one")

    cli.ok_json("resume", thread, "--approve", code=0)
    count = cli.checkpoint_count(thread)
    decisions = tmp_path / "approve.json"
    decisions.write_text('[{"type": "approve"}]')
    ended, approve, file, cancel = concurrently(
        lambda: cli("resume", thread),
        lambda: cli("resume", thread, "--approve"),
        lambda: cli("resume", thread, "--decisions", str(decisions)),
        lambda: cli("cancel", thread),
    )
    one_line_error(ended, 2, "already ended")
    one_line_error(approve, 2, "not awaiting approval")
    one_line_error(file, 2, "not awaiting approval")
    one_line_error(cancel, 2, "already ended")
    assert cli.checkpoint_count(thread) == count
    assert cli.ok_json("status", thread, code=0)["status"] == "completed"


def test_cancel_an_awaiting_thread(cli: Cli, awaiting: dict[str, Any]) -> None:
    thread = awaiting["cancel"]["thread_id"]
    data = cli.ok_json("cancel", thread, code=3)
    assert data["status"] == "halted"
    assert data["halt_reason"] == "cancelled"
    assert data["pending_approval"] is None
    assert cli.emails() == []
    status = cli.ok_json("status", thread, code=3)
    assert (status["status"], status["halt_reason"]) == ("halted", "cancelled")
    history = cli.ok_json("history", thread, code=0)
    [unanswered] = [
        m for m in history["messages"] if m["type"] == "tool" and m["name"] == "send_email"
    ]
    assert "Not executed" in unanswered["content"]


# --- bad input ------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(
    cli: Cli, email_script: Path, tmp_path: Path, workspace: Path
) -> None:
    model = ["--model", f"scripted:{email_script}", "--workspace", str(workspace)]
    files = {
        "bad.json": '{"turns": [',
        "shape.json": '{"turns": [{"content": "x", "tool_calls": [{"args": {}}]}]}',
        "a.toml": "[budgets\nmax_steps = 1\n",
        "b.toml": "[budgets]\nmax_stepz = 3\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cases: dict[str, tuple[list[str], list[str]]] = {
        "--max-steps 0": (["go", *model, "--max-steps", "0", "--json"], ["max_steps"]),
        "--max-cost -1": (["go", *model, "--max-cost", "-1", "--json"], ["max_cost"]),
        "unknown model": (
            ["go", "--model", "nosuchprovider:foo", "--json"],
            ["nosuchprovider:foo"],
        ),
        "script not JSON": (
            ["go", "--model", f"scripted:{tmp_path / 'bad.json'}"],
            ["not valid JSON"],
        ),
        "script bad shape": (
            ["go", "--model", f"scripted:{tmp_path / 'shape.json'}"],
            ["malformed"],
        ),
        "no model": (
            ["go", "--workspace", str(workspace), "--json"],
            ["no model configured", "warden demo"],
        ),
        "config not TOML": (
            ["go", *model, "--config", str(tmp_path / "a.toml")],
            ["not valid TOML"],
        ),
        "config unknown key": (["go", *model, "--config", str(tmp_path / "b.toml")], ["max_stepz"]),
        "approve-all + no-input": (
            ["go", *model, "--approve-all", "--no-input"],
            ["--approve-all"],
        ),
        "oversized task": (
            ["x" * 20_001, *model, "--json"],
            ["20001 characters", "max_task_chars"],
        ),
    }
    # A database that cannot be reached: exit 1, one line (the pool's retries are not
    # printed). Started first, in the background: the pool waits out its timeout.
    down = {"WARDEN_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"}
    with ThreadPoolExecutor(max_workers=1) as background:
        pending = background.submit(cli, "run", "hi", *model, env=down)
        before = cli("threads", "--json").json()
        results = concurrently(*(lambda a=args: cli("run", *a) for args, _ in cases.values()))
        failures = []
        for (name, (_, needles)), result in zip(cases.items(), results, strict=True):
            try:
                one_line_error(result, 2, *needles)
                assert result.out == "", "nothing on stdout"
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
        assert not failures, "\n\n".join(failures)
        assert cli("threads", "--json").json() == before  # nothing was stored
        one_line_error(pending.result(), 1, "database unavailable")


def test_config_file_sets_budgets_and_flags_override(
    cli: Cli, write_script, workspace: Path, tmp_path: Path
) -> None:
    script = write_script(
        [
            turn("one", call("read_file", path="notes.txt")),
            turn("two", call("read_file", path="todo.md")),
            turn("done"),
        ]
    )
    config = tmp_path / "warden.toml"
    config.write_text(
        f'model = "scripted:{script}"\n'
        f'workspace = "{workspace}"\n'
        "[budgets]\nmax_steps = 1\nmax_tool_calls = 7\nmax_cost = 0.25\nmax_seconds = 90\n"
    )
    halted = cli.ok_json("run", "read", "--config", str(config), code=3)
    assert halted["halt_reason"] == "max_steps"
    assert halted["budgets"]["max_steps"] == 1
    assert halted["budgets"]["max_tool_calls"] == 7
    assert halted["budgets"]["max_cost"] == 0.25
    assert halted["budgets"]["max_seconds"] == 90
    data = cli.ok_json(
        "run", "read", "--config", str(config), "--max-steps", "5", "--max-cost", "0.75", code=0
    )
    assert data["status"] == "completed"
    assert data["usage"]["model_calls"] == 3
    assert data["budgets"]["max_steps"] == 5
    assert data["budgets"]["max_cost"] == 0.75
    assert data["budgets"]["max_tool_calls"] == 7  # from the file, not overridden


# --- inspection -----------------------------------------------------------------------


def test_status_history_threads_json(cli: Cli, write_script, workspace: Path) -> None:
    script = write_script([turn("look", call("read_file", path="notes.txt")), turn("notes read")])
    thread = f"inspect-{uuid.uuid4().hex[:8]}"
    run = cli.ok_json(
        "run",
        "inspect me",
        "--model",
        f"scripted:{script}",
        "--workspace",
        str(workspace),
        "--thread-id",
        thread,
        code=0,
    )
    assert run["thread_id"] == thread
    status_r, history_r, threads, human = concurrently(
        lambda: cli("status", thread, "--json"),
        lambda: cli("history", thread, "--json"),
        lambda: cli("threads", "--json"),
        lambda: cli("history", thread),
    )
    assert status_r.code == 0 and history_r.code == 0, f"{status_r}\n{history_r}"
    status, history = status_r.json(), history_r.json()
    assert set(status) == JSON_KEYS
    assert status["status"] == "completed"
    assert status["usage"] == run["usage"]
    assert status["final_answer"] == "notes read"
    assert history["thread_id"] == thread
    assert history["objective"] == "inspect me"
    assert [m["type"] for m in history["messages"]] == ["human", "ai", "tool", "ai"]
    assert history["messages"][1]["tool_calls"][0]["name"] == "read_file"
    assert history["messages"][2]["content"] == "alpha\nbeta\n"
    assert history["approvals"] == []
    assert history["report"]["halt_reason"] == "completed"
    assert len(history["checkpoints"]) == cli.checkpoint_count(thread)
    assert threads.code == 0, str(threads)
    [row] = [r for r in threads.json() if r["thread_id"] == thread]
    assert (row["task"], row["status"], row["halt_reason"]) == (
        "inspect me",
        "completed",
        "completed",
    )
    assert human.code == 0 and "notes read" in human.out


def test_follow_up_run_on_a_finished_thread(cli: Cli, write_script, workspace: Path) -> None:
    script = write_script([turn("first answer"), turn("second answer")])
    thread = str(uuid.uuid4())
    args = ["--model", f"scripted:{script}", "--workspace", str(workspace), "--thread-id", thread]
    assert cli.ok_json("run", "one", *args, code=0)["final_answer"] == "first answer"
    second = cli.ok_json("run", "two", *args, code=0)
    assert second["final_answer"] == "second answer"
    assert second["usage"]["model_calls"] == 1  # usage is per run


# --- database -------------------------------------------------------------------------


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty, unmigrated database on the same server as `database_url`."""
    params = conninfo_to_dict(database_url)
    admin = make_conninfo(**{**params, "dbname": "postgres"})
    name = f"warden_t_fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**{**params, "dbname": name})
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_unmigrated_database_then_db_migrate(
    cli: Cli, fresh_database: str, write_script, workspace: Path
) -> None:
    script = write_script([turn("hello")])
    env: dict[str, str | None] = {"WARDEN_DATABASE_URL": fresh_database}
    run = ["run", "hi", "--model", f"scripted:{script}", "--workspace", str(workspace)]
    one_line_error(cli(*run, env=env), 2, "warden db migrate")
    migrated = cli("db", "migrate", env=env)
    assert migrated.code == 0, str(migrated)
    assert "migrated" in migrated.out
    with psycopg.connect(fresh_database) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert {"checkpoints", "checkpoint_writes", "warden_threads", "warden_migrations"} <= tables
    again = cli("db", "migrate", env=env)
    assert again.code == 0 and "0 Warden migration" in again.out, str(again)
    data = cli.ok_json(*run, env=env, code=0)
    assert data["final_answer"] == "hello"


def test_demo_embedded_non_interactive(tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WARDEN_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "WARDEN_MODEL")
    }
    env |= {"WARDEN_DATA_DIR": str(data), "LANGSMITH_TRACING": "false"}
    proc = subprocess.run(
        [str(WARDEN), "demo"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert '"halt_reason": "loop"' in proc.stderr
    assert "auto" in proc.stderr  # the non-interactive notice
    emails = (data / "outbox" / "outbox.jsonl").read_text().splitlines()
    assert len(emails) == 1
    assert json.loads(emails[0])["to"] == "oncall@example.com"
    assert '"emails_sent": 1' in proc.stderr
    assert (data / "pgdata").is_dir()
    threads = subprocess.run(
        [str(WARDEN), "threads", "--json"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert threads.returncode == 0, threads.stderr
    [row] = json.loads(threads.stdout)
    assert (row["status"], row["halt_reason"]) == ("halted", "loop")
    # A second demo on the same data dir reports what it sent, not the outbox's total.
    again = subprocess.run(
        [str(WARDEN), "demo"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=env, cwd=tmp_path, timeout=180,
    )
    assert again.returncode == 0, again.stderr
    assert '"emails_sent": 1' in again.stderr
    assert len((data / "outbox" / "outbox.jsonl").read_text().splitlines()) == 2
