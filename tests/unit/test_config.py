"""Configuration: the TOML config file, Context validation, the approval policy and prices."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from graph.context import MAX_STEPS_CEILING, Context, recursion_limit_for
from graph.errors import ConfigError
from graph.policy import Policy, Tier
from graph.pricing import DEFAULT_PRICES, ModelPrice, cost_usd, lookup_price, model_key
from graph.settings import ConfigFile, load_config_file, make_context

FULL_TOML = """
model = "openai:gpt-4.1-mini"
base_url = "http://127.0.0.1:9999/v1"
workspace = "ws"
tenant = "acme"
system_prompt = "Be brief."
max_task_chars = 500

[budgets]
max_steps = 7
max_tool_calls = 9
max_tokens = 5000
max_cost = 0.25
max_seconds = 30.5
soft_threshold = 0.5
per_tool = { send_email = 1, read_file = 4 }

[loop]
repeat_threshold = 4
cycle_repeats = 2
error_repeats = 5
observation_repeats = 6
window = 20

[policy]
ask_tiers = ["write", "irreversible"]
deny_tiers = ["destructive"]
tiers = { send_email = "destructive", list_files = "write" }
allowed_tools = ["read_file", "send_email"]
max_rejections = 2

[prices."my-local-model"]
input_per_mtok = 0.5
output_per_mtok = 1.5

[prices."gpt-4o-mini"]
input_per_mtok = 0.0
output_per_mtok = 0.0
"""


def write(tmp_path: Path, text: str, name: str = "warden.toml") -> Path:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path) -> str:
    """Load a config that must be refused; return its one-line message."""
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- load_config_file ----------------------------------------------------------------


def test_no_path_means_empty_config() -> None:
    config = load_config_file(None)
    assert config == ConfigFile()
    assert config.context_fields() == {}


def test_empty_file_sets_nothing(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, "")).context_fields() == {}


def test_full_file_maps_to_context_fields(tmp_path: Path) -> None:
    config = load_config_file(write(tmp_path, FULL_TOML))
    assert config.model == "openai:gpt-4.1-mini"
    assert config.base_url == "http://127.0.0.1:9999/v1"
    fields = config.context_fields()
    assert fields == {
        "max_steps": 7,
        "max_tool_calls": 9,
        "max_tokens": 5000,
        "max_cost": 0.25,
        "max_seconds": 30.5,
        "soft_threshold": 0.5,
        "max_tool_calls_per_tool": {"send_email": 1, "read_file": 4},
        "loop_repeat_threshold": 4,
        "loop_cycle_repeats": 2,
        "loop_error_repeats": 5,
        "loop_observation_repeats": 6,
        "loop_window": 20,
        "ask_tiers": ("write", "irreversible"),
        "deny_tiers": ("destructive",),
        "tier_overrides": {"send_email": "destructive", "list_files": "write"},
        "allowed_tools": ("read_file", "send_email"),
        "max_rejections": 2,
        "prices": {
            "my-local-model": ModelPrice(input_per_mtok=0.5, output_per_mtok=1.5),
            "gpt-4o-mini": ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0),
        },
        "tenant": "acme",
        "system_prompt": "Be brief.",
        "max_task_chars": 500,
    }


def test_full_file_builds_a_context(tmp_path: Path) -> None:
    ctx = make_context(load_config_file(write(tmp_path, FULL_TOML)).context_fields())
    assert ctx.max_steps == 7
    assert ctx.recursion_limit() == 4 * 8 + 10
    assert ctx.policy == Policy(
        ask_tiers=frozenset({"write", "irreversible"}),
        deny_tiers=frozenset({"destructive"}),
        tier_overrides={"send_email": "destructive", "list_files": "write"},
        allow_tools=frozenset({"read_file", "send_email"}),
    )
    tiers: dict[str, Tier] = {"read_file": "read", "send_email": "irreversible",
                              "list_files": "read"}
    assert ctx.policy.decide("send_email", tiers) == "deny"  # overridden to destructive
    assert ctx.policy.decide("list_files", tiers) == "deny"  # not in allowed_tools
    assert ctx.policy.decide("read_file", tiers) == "allow"
    assert ctx.price_table["my-local-model"].output_per_mtok == 1.5
    assert ctx.price_table["gpt-4o-mini"].input_per_mtok == 0.0
    assert ctx.price_table["gpt-4o"] == DEFAULT_PRICES["gpt-4o"]


def test_partial_file_leaves_other_fields_unset(tmp_path: Path) -> None:
    config = load_config_file(write(tmp_path, "[budgets]\nmax_steps = 3\nper_tool = {}\n"))
    assert config.context_fields() == {"max_steps": 3}
    ctx = make_context(config.context_fields())
    assert (ctx.max_steps, ctx.max_tool_calls) == (3, Context().max_tool_calls)


def test_empty_lists_are_kept(tmp_path: Path) -> None:
    """An explicit empty list (ask nobody, allow no tool) differs from an unset key."""
    config = load_config_file(write(tmp_path, "[policy]\nask_tiers = []\nallowed_tools = []\n"))
    assert config.context_fields() == {"ask_tiers": (), "allowed_tools": ()}
    ctx = make_context(config.context_fields())
    assert ctx.policy.decide("send_email", {"send_email": "irreversible"}) == "deny"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('workspace = "ws"', "{dir}/ws", id="relative"),
        pytest.param('workspace = "../shared/ws"', "{parent}/shared/ws", id="dot-dot"),
        pytest.param('workspace = "/srv/warden/ws"', "/srv/warden/ws", id="absolute"),
    ],
)
def test_workspace_is_resolved_against_the_config_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    config = load_config_file(write(folder, text))
    want = expected.format(dir=folder.resolve(), parent=tmp_path.resolve())
    assert config.workspace == Path(want)
    assert config.workspace is not None and config.workspace.is_absolute()


def test_workspace_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`~` means the home directory, as it does for `--workspace`, not a folder named `~`."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    config = load_config_file(write(tmp_path, 'workspace = "~/agent-ws"'))
    assert config.workspace == home / "agent-ws"


def test_workspace_unset_stays_unset(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, 'tenant = "t"')).workspace is None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert config_error(path) == f"config file not found: {path}"


def test_directory_is_not_readable(tmp_path: Path) -> None:
    assert config_error(tmp_path).startswith(f"cannot read config file {tmp_path}:")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        pytest.param('max_steps = \ntenant = "t"\n', "Invalid value (at line 1, column 13)",
                     id="no-value"),
        pytest.param("[budgets\nmax_steps = 3", "Expected ']' at the end of a table declaration "
                     "(at line 1, column 9)", id="unclosed-table"),
        pytest.param('model = "a"\nmodel = "b"\n', "Cannot overwrite a value (at line 2",
                     id="duplicate-key"),
        pytest.param("budgets = 1\n[budgets]\n", "Cannot overwrite a value (at line 2",
                     id="key-then-table"),
        pytest.param('model = "a"\nmodel = "b"', "Cannot overwrite a value", id="at-end"),
    ],
)
def test_toml_syntax_errors(tmp_path: Path, text: str, detail: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"config file {path} is not valid TOML: ")
    assert detail in message


@pytest.mark.parametrize(
    ("text", "where", "msg"),
    [
        pytest.param("colour = 1", "colour", "Extra inputs are not permitted", id="top-level"),
        pytest.param("[budgets]\nmax_step = 3", "budgets.max_step",
                     "Extra inputs are not permitted", id="budgets-typo"),
        pytest.param("[loop]\nthreshold = 3", "loop.threshold", "Extra inputs are not permitted",
                     id="loop-typo"),
        pytest.param("[policy]\nask = []", "policy.ask", "Extra inputs are not permitted",
                     id="policy-typo"),
        pytest.param('[prices."m"]\ninput_per_mtok = 1\noutput_per_mtok = 1\ncached = 0',
                     "prices.m.cached", "Extra inputs are not permitted", id="price-extra"),
        pytest.param("[limits]\nmax_steps = 3", "limits", "Extra inputs are not permitted",
                     id="unknown-table"),
        pytest.param('[policy]\nask_tiers = ["dangerous"]', "policy.ask_tiers.0",
                     "Input should be 'read', 'write', 'irreversible' or 'destructive'",
                     id="bad-ask-tier"),
        pytest.param('[policy]\ndeny_tiers = ["Read"]', "policy.deny_tiers.0",
                     "Input should be 'read'", id="bad-deny-tier-case"),
        pytest.param('[policy]\ntiers = { send_email = "harmless" }', "policy.tiers.send_email",
                     "Input should be 'read'", id="bad-override-tier"),
        pytest.param('[policy]\nask_tiers = "irreversible"', "policy.ask_tiers",
                     "Input should be a valid list", id="tiers-not-list"),
        pytest.param('[budgets]\nmax_steps = "ten"', "budgets.max_steps",
                     "Input should be a valid integer", id="steps-not-int"),
        pytest.param("[budgets]\nmax_steps = 2.5", "budgets.max_steps",
                     "Input should be a valid integer", id="steps-fraction"),
        pytest.param('[budgets]\nper_tool = { send_email = "one" }', "budgets.per_tool.send_email",
                     "Input should be a valid integer", id="per-tool-not-int"),
        pytest.param('[prices."m"]\ninput_per_mtok = 1', "prices.m.output_per_mtok",
                     "Field required", id="price-incomplete"),
        pytest.param('[prices."m"]\ninput_per_mtok = -1\noutput_per_mtok = 1',
                     "prices.m.input_per_mtok", "Input should be greater than or equal to 0",
                     id="price-negative"),
        pytest.param("budgets = 3", "budgets", "Input should be a valid dictionary",
                     id="table-not-table"),
    ],
)
def test_invalid_content(tmp_path: Path, text: str, where: str, msg: str) -> None:
    path = write(tmp_path, text)
    assert config_error(path).startswith(f"config file {path}: {where}: {msg}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[budgets]\nmax_steps = 0", "invalid setting max_steps: Input should be "
                     "greater than 0", id="zero-steps"),
        pytest.param("[budgets]\nmax_cost = -1.0", "invalid setting max_cost: Input should be "
                     "greater than 0", id="negative-cost"),
        pytest.param("[budgets]\nsoft_threshold = 1.5", "invalid setting soft_threshold: Input "
                     "should be less than or equal to 1", id="threshold-above-one"),
        pytest.param("[budgets]\nper_tool = { send_email = -1 }", "invalid setting "
                     "max_tool_calls_per_tool: per-tool limit for 'send_email' must "
                     "be >= 0, got -1", id="negative-per-tool"),
        pytest.param("[loop]\nwindow = 3", "invalid setting loop_window: Input should be greater "
                     "than or equal to 4", id="window-too-small"),
        pytest.param("[loop]\nrepeat_threshold = 1", "invalid setting loop_repeat_threshold: "
                     "Input should be greater than or equal to 2", id="repeat-one"),
        pytest.param("[policy]\nmax_rejections = 0", "invalid setting max_rejections: Input "
                     "should be greater than or equal to 1", id="zero-rejections"),
        pytest.param('tenant = ""', "invalid setting tenant: String should have at least 1 "
                     "character", id="empty-tenant"),
    ],
)
def test_out_of_range_values_fail_when_the_context_is_built(
    tmp_path: Path, text: str, message: str
) -> None:
    fields = load_config_file(write(tmp_path, text)).context_fields()
    with pytest.raises(ConfigError) as info:
        make_context(fields)
    assert str(info.value) == message


# --- Context validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_steps", 0),
        ("max_steps", -1),
        ("max_tool_calls", -1),
        ("max_tokens", 0),
        ("max_cost", 0.0),
        ("max_cost", -0.01),
        ("max_seconds", 0),
        ("max_seconds", -5.0),
        ("max_task_chars", 0),
    ],
)
def test_non_positive_budgets_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        Context(**{field: value})
    with pytest.raises(ConfigError, match=f"^invalid setting {field}: Input should be greater"):
        make_context({field: value})


def test_zero_tool_calls_is_a_valid_budget() -> None:
    assert Context(max_tool_calls=0).max_tool_calls == 0
    assert Context(max_tool_calls_per_tool={"send_email": 0}).max_tool_calls_per_tool == {
        "send_email": 0
    }


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0.0, False), (-0.1, False), (0.01, True), (0.8, True), (1.0, True), (1.01, False)],
)
def test_soft_threshold_range(value: float, ok: bool) -> None:
    if ok:
        assert Context(soft_threshold=value).soft_threshold == value
    else:
        with pytest.raises(ConfigError, match=r"^invalid setting soft_threshold: "):
            make_context({"soft_threshold": value})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"ask_tiers": ("bogus",)}, "invalid setting ask_tiers: unknown "
                     "tier 'bogus'; expected one of read, write, irreversible, destructive",
                     id="ask"),
        pytest.param({"deny_tiers": ("write", "nuclear")}, "invalid setting deny_tiers: "
                     "unknown tier 'nuclear'", id="deny"),
        pytest.param({"tier_overrides": {"send_email": "safe"}}, "invalid setting "
                     "tier_overrides.send_email: Input should be 'read'", id="override"),
        pytest.param({"bogus": 1}, "invalid setting bogus: Unexpected keyword argument",
                     id="unknown-field"),
    ],
)
def test_unknown_tiers_and_fields_are_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_context(fields)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        pytest.param({"loop_window": 4, "loop_repeat_threshold": 5}, "loop_repeat_threshold",
                     id="repeat"),
        pytest.param({"loop_window": 6, "loop_error_repeats": 7}, "loop_error_repeats",
                     id="errors"),
        pytest.param({"loop_window": 8, "loop_observation_repeats": 20},
                     "loop_observation_repeats", id="observations"),
    ],
)
def test_loop_window_must_hold_the_repetitions(fields: dict[str, Any], name: str) -> None:
    """A threshold larger than the window would silently switch that loop check off."""
    with pytest.raises(ConfigError) as info:
        make_context(fields)
    message = str(info.value)
    assert message.startswith("invalid setting loop_window: ")
    assert name in message


def test_loop_window_equal_to_thresholds_is_accepted() -> None:
    ctx = Context(loop_window=5, loop_repeat_threshold=5, loop_error_repeats=5,
                  loop_observation_repeats=5)
    assert ctx.loop_window == 5


def test_context_is_frozen() -> None:
    ctx = Context()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.max_steps = 3  # type: ignore[misc]


def test_max_steps_has_a_ceiling() -> None:
    assert Context(max_steps=MAX_STEPS_CEILING).max_steps == MAX_STEPS_CEILING
    with pytest.raises(ConfigError, match=r"^invalid setting max_steps: Input should be less"):
        make_context({"max_steps": MAX_STEPS_CEILING + 1})


@pytest.mark.parametrize(("steps", "limit"), [(1, 18), (25, 114), (100, 414)])
def test_recursion_limit_is_derived_from_max_steps(steps: int, limit: int) -> None:
    assert Context(max_steps=steps).recursion_limit() == limit
    assert recursion_limit_for(steps) == limit


def test_recursion_limit_leaves_room_for_every_model_cycle() -> None:
    # plan, approve, act, observe per model call plus halt: never cut off before max_steps.
    for steps in (1, 5, 25):
        assert Context(max_steps=steps).recursion_limit() >= 4 * steps + 1


def test_price_table_extends_and_overrides_defaults() -> None:
    ctx = Context(
        prices={
            "local": ModelPrice(input_per_mtok=1, output_per_mtok=2),
            "gpt-4o": {"input_per_mtok": 0, "output_per_mtok": 0},  # type: ignore[dict-item]
        }
    )
    table = ctx.price_table
    assert table["local"] == ModelPrice(input_per_mtok=1, output_per_mtok=2)
    assert table["gpt-4o"] == ModelPrice(input_per_mtok=0, output_per_mtok=0)
    assert table["gpt-4o-mini"] == DEFAULT_PRICES["gpt-4o-mini"]
    assert DEFAULT_PRICES["gpt-4o"].input_per_mtok == 2.50  # defaults untouched
    assert set(Context().price_table) == set(DEFAULT_PRICES)


def test_budgets_report() -> None:
    ctx = Context(max_steps=3, max_tool_calls_per_tool={"send_email": 1})
    assert ctx.budgets() == {
        "max_steps": 3,
        "max_tool_calls": 50,
        "max_tool_calls_per_tool": {"send_email": 1},
        "max_tokens": 200_000,
        "max_cost": 1.0,
        "max_seconds": 600.0,
        "soft_threshold": 0.8,
    }


# --- policy --------------------------------------------------------------------------

TIERS: dict[str, Tier] = {
    "read_file": "read",
    "write_note": "write",
    "send_email": "irreversible",
    "drop_table": "destructive",
}

POLICY_CASES = [
    pytest.param(Policy(), "read_file", "allow", id="read-allowed"),
    pytest.param(Policy(), "write_note", "allow", id="write-allowed"),
    pytest.param(Policy(), "send_email", "ask", id="irreversible-asks"),
    pytest.param(Policy(), "drop_table", "ask", id="destructive-asks"),
    pytest.param(Policy(), "rm_rf", "deny", id="unknown-denied"),
    pytest.param(Policy(ask_tiers=frozenset()), "send_email", "allow", id="no-ask-tiers"),
    pytest.param(Policy(ask_tiers=frozenset({"write"})), "write_note", "ask", id="ask-write"),
    pytest.param(Policy(ask_tiers=frozenset({"write"})), "drop_table", "allow",
                 id="ask-only-write"),
    pytest.param(Policy(deny_tiers=frozenset({"destructive"})), "drop_table", "deny",
                 id="deny-tier"),
    pytest.param(Policy(deny_tiers=frozenset({"irreversible"})), "send_email", "deny",
                 id="deny-beats-ask"),
    pytest.param(Policy(deny_tiers=frozenset({"destructive"})), "send_email", "ask",
                 id="deny-other-tier"),
    pytest.param(Policy(tier_overrides={"send_email": "read"}), "send_email", "allow",
                 id="override-down"),
    pytest.param(Policy(tier_overrides={"read_file": "destructive"}), "read_file", "ask",
                 id="override-up"),
    pytest.param(Policy(tier_overrides={"rm_rf": "read"}), "rm_rf", "deny",
                 id="override-cannot-add-tool"),
    pytest.param(Policy(tier_overrides={"write_note": "destructive"},
                        deny_tiers=frozenset({"destructive"})), "write_note", "deny",
                 id="override-into-deny"),
    pytest.param(Policy(allow_tools=frozenset({"read_file"})), "read_file", "allow",
                 id="allow-listed"),
    pytest.param(Policy(allow_tools=frozenset({"read_file"})), "write_note", "deny",
                 id="not-allow-listed"),
    pytest.param(Policy(allow_tools=frozenset({"send_email"})), "send_email", "ask",
                 id="allow-listed-still-asks"),
    pytest.param(Policy(allow_tools=frozenset()), "read_file", "deny", id="empty-allow-list"),
    pytest.param(Policy(allow_tools=frozenset({"rm_rf"})), "rm_rf", "deny",
                 id="allow-list-cannot-add-tool"),
]


@pytest.mark.parametrize(("policy", "tool", "decision"), POLICY_CASES)
def test_policy_decide(policy: Policy, tool: str, decision: str) -> None:
    assert policy.decide(tool, TIERS) == decision


def test_policy_tier_of() -> None:
    policy = Policy(tier_overrides={"read_file": "write"})
    assert policy.tier_of("read_file", TIERS) == "write"
    assert policy.tier_of("send_email", TIERS) == "irreversible"
    assert policy.tier_of("rm_rf", TIERS) is None


def test_context_policy_defaults() -> None:
    policy = Context().policy
    assert policy == Policy()
    assert policy.allow_tools is None


# --- pricing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o", "gpt-4o"),
        ("openai:gpt-4o-mini", "gpt-4o-mini"),
        ("anthropic:claude-sonnet-4-0", "claude-sonnet-4-0"),
        ("azure_openai:deployments:x", "deployments:x"),
        ("scripted", "scripted"),
    ],
)
def test_model_key(model: str, key: str) -> None:
    assert model_key(model) == key


LOCAL = ModelPrice(input_per_mtok=1, output_per_mtok=3)
PREFIXED = ModelPrice(input_per_mtok=7, output_per_mtok=9)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("gpt-4o-mini", DEFAULT_PRICES["gpt-4o-mini"], id="plain"),
        pytest.param("openai:gpt-4o-mini", DEFAULT_PRICES["gpt-4o-mini"], id="provider-prefix"),
        pytest.param("local", LOCAL, id="extra"),
        pytest.param("ollama:local", PREFIXED, id="full-string-wins"),
        pytest.param("vllm:local", LOCAL, id="prefix-stripped"),
        pytest.param("mystery-model", None, id="unknown"),
        pytest.param("openai:mystery", None, id="unknown-prefixed"),
    ],
)
def test_lookup_price(model: str, expected: ModelPrice | None) -> None:
    prices = {**DEFAULT_PRICES, "local": LOCAL, "ollama:local": PREFIXED}
    assert lookup_price(model, prices) == expected


@pytest.mark.parametrize(
    ("reported", "key"),
    [
        pytest.param("gpt-4o-mini-2024-07-18", "gpt-4o-mini", id="openai-snapshot"),
        pytest.param("openai:gpt-4.1-2025-04-14", "gpt-4.1", id="prefixed-snapshot"),
        pytest.param("o4-mini-2025-04-16", "o4-mini", id="o-series-snapshot"),
        pytest.param("gpt-4.1-nano-20250414", "gpt-4.1-nano", id="compact-date"),
    ],
)
def test_lookup_price_of_a_dated_snapshot(reported: str, key: str) -> None:
    """Providers report the snapshot they served (OpenAI: `gpt-4o-mini-2024-07-18`).

    Without this, a real run's cost would count as 0 and `max_cost` would never stop it.
    """
    assert lookup_price(reported, DEFAULT_PRICES) == DEFAULT_PRICES[key]


def test_exact_snapshot_price_wins_over_its_family() -> None:
    pinned = ModelPrice(input_per_mtok=5, output_per_mtok=15)
    prices = {**DEFAULT_PRICES, "gpt-4o-2024-05-13": pinned}
    assert lookup_price("gpt-4o-2024-05-13", prices) == pinned
    assert lookup_price("gpt-4o-2024-08-06", prices) == DEFAULT_PRICES["gpt-4o"]


@pytest.mark.parametrize("model", ["gpt-4o-mini-2024", "gpt-4o-mini-preview", "mystery-2024-07-18"])
def test_lookup_price_does_not_guess_beyond_a_date(model: str) -> None:
    assert lookup_price(model, DEFAULT_PRICES) is None


def test_lookup_price_finds_a_zero_price() -> None:
    free = ModelPrice(input_per_mtok=0, output_per_mtok=0)
    assert lookup_price("openai:free", {"free": free}) == free


@pytest.mark.parametrize(
    ("price", "tokens", "cost"),
    [
        pytest.param(None, (10**6, 10**6), 0.0, id="no-price"),
        pytest.param(DEFAULT_PRICES["gpt-4o-mini"], (10**6, 0), 0.15, id="input-million"),
        pytest.param(DEFAULT_PRICES["gpt-4o-mini"], (0, 10**6), 0.60, id="output-million"),
        pytest.param(DEFAULT_PRICES["gpt-4o"], (1000, 500), 0.0075, id="mixed"),
        pytest.param(LOCAL, (0, 0), 0.0, id="no-tokens"),
    ],
)
def test_cost_usd(price: ModelPrice | None, tokens: tuple[int, int], cost: float) -> None:
    assert cost_usd(price, *tokens) == pytest.approx(cost)


@pytest.mark.parametrize(
    "raw",
    [
        {"input_per_mtok": -1, "output_per_mtok": 1},
        {"input_per_mtok": 1},
        {"input_per_mtok": 1, "output_per_mtok": 1, "currency": "EUR"},
    ],
)
def test_model_price_validation(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ModelPrice.model_validate(raw)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"loop_observation_repeats": 50}, id="threshold-over-default-window"),
        pytest.param({"loop_repeat_threshold": 13}, id="repeat-over-default-window"),
        pytest.param({"loop_window": 5, "loop_error_repeats": 6}, id="explicit-window"),
    ],
)
def test_a_window_too_small_for_a_threshold_is_refused_with_or_without_an_explicit_window(
    fields: dict[str, int],
) -> None:
    with pytest.raises(ConfigError, match="loop_window: a window of"):
        make_context(fields)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"loop_observation_repeats": 50, "loop_window": 60},
        {"max_steps": 1000, "prices": {"m": {"input_per_mtok": 1, "output_per_mtok": 2}}},
        {"ask_tiers": ("write",), "allowed_tools": ("read_file",), "tier_overrides": {"x": "read"}},
    ],
)
def test_every_buildable_context_round_trips_through_its_stored_json(fields: dict) -> None:
    # A run's Context is stored in state and rebuilt at every node.
    from graph.context import context_from_json, context_to_json

    ctx = make_context(fields)
    assert context_from_json(context_to_json(ctx)) == ctx
