"""The CLI with a config file: user tools by import path, a policy profile, argument rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call, turn

WARDEN = Path(sys.executable).parent / "warden"

USER_TOOLS = '''
from pathlib import Path

LEDGER = Path(__file__).with_name("refunds.log")


def lookup_order(order_id: int) -> str:
    """Look up an order by its id."""
    return f"order {order_id}: 2 items, shipped"


def refund(order_id: int, amount: float) -> str:
    """Refund an order. Money leaves the company."""
    with LEDGER.open("a") as fh:
        fh.write(f"{order_id}:{amount}\\n")
    return f"refunded {amount} on order {order_id}"
'''

POLICY = '''
default_profile = "support"

[profiles.support]
tools = ["read_file", "lookup_order", "refund", "send_email"]

[[profiles.support.rules]]
tool = "refund"
arg = "amount"
gt = 100
action = "ask"
reason = "refunds over 100 need a human"

[[profiles.support.rules]]
tool = "send_email"
arg = "to"
domains_not_in = ["example.com"]
action = "deny"
'''


@pytest.fixture
def setup(tmp_path: Path, database_url: str, workspace: Path) -> dict[str, Any]:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "shoptools.py").write_text(USER_TOOLS)
    (tmp_path / "policy.toml").write_text(POLICY)
    config = tmp_path / "warden.toml"
    config.write_text(
        f'workspace = "{workspace}"\npolicy_file = "policy.toml"\nprofile = "support"\n'
        '[[tools]]\npath = "shoptools:lookup_order"\ntier = "read"\n'
        '[[tools]]\npath = "shoptools:refund"\ntier = "write"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "WARDEN_MODEL")}
    env |= {
        "WARDEN_DATABASE_URL": database_url,
        "WARDEN_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(pkg),
    }
    return {"config": config, "env": env, "ledger": pkg / "refunds.log", "tmp": tmp_path}


def warden(setup: dict[str, Any], *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [str(WARDEN), *args], capture_output=True, text=True, env=setup["env"],
        cwd=setup["tmp"], stdin=subprocess.DEVNULL, timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, out, proc.stderr


def test_profile_rules_and_user_tools(setup, write_script) -> None:
    script = write_script(
        [
            turn("", call("lookup_order", order_id=7)),
            turn("", call("send_email", to="x@evil.test", subject="s", body="b")),
            turn("", call("refund", order_id=7, amount=20)),
            turn("done"),
        ]
    )
    code, out, err = warden(
        setup, "run", "help the customer", "--config", str(setup["config"]),
        "--model", f"scripted:{script}", "--json",
    )
    assert code == 0, err
    tid = out["thread_id"]
    _, history, _ = warden(setup, "history", tid, "--json")
    results = {m["name"]: m for m in history["messages"] if m["type"] == "tool"}
    assert results["lookup_order"]["content"] == "order 7: 2 items, shipped"
    assert results["send_email"]["status"] == "error"
    assert "refused by policy" in results["send_email"]["content"]
    assert results["refund"]["status"] == "success"  # small refund: allowed by the profile
    assert setup["ledger"].read_text() == "7:20.0\n"


def test_rule_sends_a_big_refund_to_approval_and_resume_rebuilds_the_user_tool(
    setup, write_script
) -> None:
    script = write_script([turn("refunding", call("refund", order_id=9, amount=500)), turn("done")])
    code, out, err = warden(
        setup, "run", "refund order 9", "--config", str(setup["config"]),
        "--model", f"scripted:{script}", "--no-input", "--json",
    )
    assert code == 4, err
    description = out["pending_approval"]["action_requests"][0]["description"]
    assert "refunds over 100 need a human" in description
    assert not setup["ledger"].exists()
    # A new process: the user's tool comes back from the stored config path.
    code, final, err = warden(setup, "resume", out["thread_id"], "--approve", "--json")
    assert code == 0, err
    assert final["status"] == "completed"
    assert setup["ledger"].read_text() == "9:500.0\n"


@pytest.mark.parametrize(
    ("policy", "tools", "message"),
    [
        (POLICY.replace('"send_email"]', '"send_email", "ghost"]'), None, "names unknown tools: ghost"),
        (POLICY, '[[tools]]\npath = "shoptools:nothing"\ntier = "read"\n', "nothing"),
        (POLICY.replace('default_profile = "support"', 'default_profile = "nope"'), None, "default_profile"),
    ],
)
def test_bad_policy_or_tools_fail_at_start_up(setup, write_script, policy, tools, message) -> None:
    (setup["tmp"] / "policy.toml").write_text(policy)
    if tools:
        setup["config"].write_text(setup["config"].read_text() + tools)
    script = write_script([turn("done")])
    code, _, err = warden(
        setup, "run", "x", "--config", str(setup["config"]), "--model", f"scripted:{script}",
    )
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_mcp_servers_from_the_config_go_through_approval(setup, write_script) -> None:
    from tests.integration.test_mcp import SERVER

    server = setup["tmp"] / "inventory_server.py"
    server.write_text(SERVER)
    ledger = setup["tmp"] / "mcp-ledger.jsonl"
    setup["config"].write_text(
        f'workspace = "{setup["tmp"]}"\n'
        "[mcp_servers.inventory]\n"
        'transport = "stdio"\n'
        f'command = "{sys.executable}"\n'
        f'args = ["{server}", "{ledger}"]\n'
    )
    script = write_script(
        [turn("reserving", call("reserve_units", sku="A-1", units=3)), turn("done")]
    )
    code, out, err = warden(
        setup, "run", "reserve stock", "--config", str(setup["config"]),
        "--model", f"scripted:{script}", "--no-input", "--json",
    )
    assert code == 4, err  # an MCP tool is irreversible unless the policy says otherwise
    assert out["pending_approval"]["tiers"] == ["irreversible"]
    assert not ledger.exists()
    code, final, err = warden(setup, "resume", out["thread_id"], "--approve", "--json")
    assert code == 0, err
    assert final["status"] == "completed"
    assert ledger.read_text().splitlines() == ['{"sku": "A-1", "units": 3}']


def test_redaction_of_views_can_be_configured(setup, write_script) -> None:
    script = write_script([turn("Tell ops@example.com, card 4111 1111 1111 1111.")])
    plain = setup["tmp"] / "plain.toml"
    plain.write_text(f'workspace = "{setup["tmp"]}"\n')
    code, out, err = warden(
        setup, "run", "x", "--config", str(plain), "--model", f"scripted:{script}", "--json"
    )
    assert code == 0, err
    assert out["final_answer"] == "Tell [REDACTED:email], card [REDACTED:card]."
    # Switched off per field, for the operator's views.
    setup["env"]["WARDEN_REDACT_SKIP_FIELDS"] = "final_answer"
    _, shown, _ = warden(setup, "status", out["thread_id"], "--json")
    assert shown["final_answer"] == "Tell ops@example.com, card 4111 1111 1111 1111."
    del setup["env"]["WARDEN_REDACT_SKIP_FIELDS"]
    # Kinds chosen in the config file: only cards.
    cards_only = setup["tmp"] / "cards.toml"
    cards_only.write_text(f'workspace = "{setup["tmp"]}"\nredact = ["card"]\n')
    code, out, err = warden(
        setup, "run", "x", "--config", str(cards_only), "--model", f"scripted:{script}", "--json"
    )
    assert out["final_answer"] == "Tell ops@example.com, card [REDACTED:card]."
