"""Workspace file tools on a real file system: confinement, links, races and size caps."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from langchain_core.messages import ToolCall

from nodes.act import execute
from tools.builtin import workspace_tools
from tools.errors import ToolError, ToolRefused
from tools.files import file_tools
from tools.registry import ToolSpec

SECRET = "TOP-SECRET-OUTSIDE"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace holding a secret the tools must never touch."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text(SECRET)
    return out


@pytest.fixture
def tools(workspace: Path) -> dict[str, ToolSpec]:
    return {s.name: s for s in file_tools(workspace, max_read_bytes=1000, max_write_bytes=1000)}


async def run(tools: dict[str, ToolSpec], name: str, **args: str) -> str:
    return await tools[name].tool.ainvoke(args)


def test_specs(tools: dict[str, ToolSpec]) -> None:
    assert {n: s.tier for n, s in tools.items()} == {
        "list_files": "read",
        "read_file": "read",
        "write_file": "write",
    }
    assert tools["write_file"].scopes == frozenset({"workspace:write"})
    for spec in tools.values():
        assert spec.args_model is not None
        assert spec.args_model.model_config.get("extra") == "forbid"


def test_workspace_tools_still_offer_the_read_tools(workspace: Path) -> None:
    assert [s.name for s in workspace_tools(workspace)] == ["list_files", "read_file"]


async def test_list_read_write_round_trip(tools: dict[str, ToolSpec], workspace: Path) -> None:
    assert await run(tools, "list_files") == "notes.txt\ntodo.md"
    assert await run(tools, "read_file", path="notes.txt") == "alpha\nbeta\n"
    assert await run(tools, "write_file", path="out/report.md", content="# done\n") == (
        "wrote 7 bytes to out/report.md"
    )
    assert (workspace / "out" / "report.md").read_text() == "# done\n"
    assert await run(tools, "list_files") == "notes.txt\nout/\ntodo.md"
    assert await run(tools, "list_files", path="out") == "report.md"
    # Overwrite replaces the whole file.
    await run(tools, "write_file", path="out/report.md", content="v2")
    assert await run(tools, "read_file", path="./out/../out/report.md") == "v2"


async def test_missing_file_and_directory_errors(tools: dict[str, ToolSpec]) -> None:
    with pytest.raises(ToolError, match=r"no such file: 'missing.txt'"):
        await run(tools, "read_file", path="missing.txt")
    with pytest.raises(ToolError, match="not a directory"):
        await run(tools, "list_files", path="notes.txt")
    with pytest.raises(ToolError, match="is a directory"):
        await run(tools, "read_file", path=".")


@pytest.mark.parametrize(
    "path", ["../outside/secret.txt", "a/../../outside/secret.txt", "..", "./../outside"]
)
async def test_dotdot_escapes_are_refused(
    tools: dict[str, ToolSpec], outside: Path, path: str
) -> None:
    for name, args in (
        ("read_file", {"path": path}),
        ("list_files", {"path": path}),
        ("write_file", {"path": path, "content": "x"}),
    ):
        with pytest.raises(ToolRefused, match="escapes the workspace"):
            await tools[name].tool.ainvoke(args)
    assert (outside / "secret.txt").read_text() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_absolute_paths_are_refused(tools: dict[str, ToolSpec], outside: Path) -> None:
    for path in (str(outside / "secret.txt"), "/etc/passwd"):
        with pytest.raises(ToolRefused, match="absolute paths are not allowed"):
            await run(tools, "read_file", path=path)
    with pytest.raises(ToolRefused, match="absolute paths are not allowed"):
        await run(tools, "write_file", path=str(outside / "new.txt"), content="x")
    assert not (outside / "new.txt").exists()
    with pytest.raises(ToolRefused, match="NUL"):
        await run(tools, "read_file", path="notes.txt\x00.png")


async def test_symlinks_that_escape_are_refused(
    tools: dict[str, ToolSpec], workspace: Path, outside: Path
) -> None:
    (workspace / "leak.txt").symlink_to(outside / "secret.txt")
    (workspace / "linkdir").symlink_to(outside, target_is_directory=True)
    (workspace / "dangling.txt").symlink_to(outside / "created-by-write.txt")
    for path in ("leak.txt", "linkdir/secret.txt"):
        with pytest.raises(ToolRefused, match="escapes the workspace"):
            await run(tools, "read_file", path=path)
    with pytest.raises(ToolRefused, match="escapes the workspace"):
        await run(tools, "list_files", path="linkdir")
    for path in ("leak.txt", "linkdir/secret.txt", "linkdir/new/deep.txt", "dangling.txt"):
        with pytest.raises(ToolRefused, match="escapes the workspace"):
            await run(tools, "write_file", path=path, content="overwritten")
    assert (outside / "secret.txt").read_text() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_symlinks_inside_the_workspace_work(
    tools: dict[str, ToolSpec], workspace: Path
) -> None:
    (workspace / "docs").mkdir()
    (workspace / "docs" / "a.txt").write_text("inside")
    (workspace / "alias.txt").symlink_to(workspace / "docs" / "a.txt")
    (workspace / "docs-link").symlink_to("docs", target_is_directory=True)
    assert await run(tools, "read_file", path="alias.txt") == "inside"
    assert await run(tools, "read_file", path="docs-link/a.txt") == "inside"
    assert await run(tools, "list_files", path="docs-link") == "a.txt"


async def test_hard_links_are_refused(
    tools: dict[str, ToolSpec], workspace: Path, outside: Path
) -> None:
    os.link(outside / "secret.txt", workspace / "hard.txt")
    with pytest.raises(ToolRefused, match="2 hard links"):
        await run(tools, "read_file", path="hard.txt")
    with pytest.raises(ToolRefused, match="hard links"):
        await run(tools, "write_file", path="hard.txt", content="overwritten")
    assert (outside / "secret.txt").read_text() == SECRET
    assert (workspace / "hard.txt").read_text() == SECRET  # not truncated either


async def test_special_files_are_refused_without_blocking(
    tools: dict[str, ToolSpec], workspace: Path
) -> None:
    os.mkfifo(workspace / "pipe")
    started = time.perf_counter()
    with pytest.raises(ToolRefused, match="not a regular file"):
        await run(tools, "read_file", path="pipe")
    with pytest.raises(ToolError):
        await run(tools, "write_file", path="pipe", content="x")
    assert time.perf_counter() - started < 2


async def test_size_caps(tools: dict[str, ToolSpec], workspace: Path) -> None:
    (workspace / "big.txt").write_text("x" * 1001)
    with pytest.raises(ToolRefused, match="1001 bytes, larger than the 1000-byte read limit"):
        await run(tools, "read_file", path="big.txt")
    (workspace / "edge.txt").write_text("y" * 1000)
    assert await run(tools, "read_file", path="edge.txt") == "y" * 1000
    # 600 characters, 1200 bytes: the byte cap holds even when the character count fits.
    with pytest.raises(ToolRefused, match="1200 bytes, larger than the 1000-byte write limit"):
        await run(tools, "write_file", path="wide.txt", content="é" * 600)
    assert not (workspace / "wide.txt").exists()
    (workspace / "bin.dat").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ToolRefused, match="looks binary"):
        await run(tools, "read_file", path="bin.dat")


async def test_through_act_arguments_are_validated(
    tools: dict[str, ToolSpec], workspace: Path
) -> None:
    call = ToolCall(name="write_file", args={}, id="w1")
    spec = tools["write_file"]
    oversized = await execute(spec, call, {"path": "a.txt", "content": "z" * 1001}, 10)
    assert oversized.response_metadata["warden"]["error"] == "invalid_arguments"
    extra = await execute(spec, call, {"path": "a.txt", "content": "z", "mode": "a"}, 10)
    assert extra.response_metadata["warden"]["error"] == "invalid_arguments"
    assert not (workspace / "a.txt").exists()
    escape = await execute(spec, call, {"path": "../x.txt", "content": "z"}, 10)
    assert escape.status == "error"
    assert escape.text.startswith("write_file failed: path '../x.txt' escapes the workspace")
    assert not (workspace.parent / "x.txt").exists()


async def test_symlink_swap_race_never_leaks(
    tools: dict[str, ToolSpec], workspace: Path, outside: Path
) -> None:
    """A directory flipped to a symlink between the check and the open is caught at open."""
    (outside / "f.txt").write_text(SECRET)
    sub = workspace / "sub"
    sub.mkdir()
    (sub / "f.txt").write_text("inside")
    parked = workspace / ".parked"
    stop = threading.Event()

    def clear() -> None:
        # write_file may recreate `sub` as a real directory while it is parked.
        if sub.is_symlink():
            os.unlink(sub)
        elif sub.exists():
            shutil.rmtree(sub, ignore_errors=True)

    def flip() -> None:
        while not stop.is_set():
            os.rename(sub, parked)
            with contextlib.suppress(FileExistsError):
                os.symlink(outside, sub)
            time.sleep(0.0002)
            while True:
                clear()
                try:
                    os.rename(parked, sub)
                    break
                except OSError:
                    continue
            time.sleep(0.0002)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    # The tools' own functions, called directly: thousands of attempts in the window.
    read_file = tools["read_file"].tool.func
    write_file = tools["write_file"].tool.func
    assert read_file is not None and write_file is not None
    seen: dict[str, int] = {}
    try:
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            try:
                text = read_file(path="sub/f.txt")
            except ToolError as exc:
                text = type(exc).__name__
            seen[text] = seen.get(text, 0) + 1
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:
            with contextlib.suppress(ToolError):
                write_file(path="sub/w.txt", content="written")
    finally:
        stop.set()
        flipper.join(5)
    assert SECRET not in seen
    assert seen.get("inside", 0) > 0
    assert sum(seen.values()) > 200
    assert sorted(p.name for p in outside.iterdir()) == ["f.txt", "secret.txt"]
    assert (outside / "f.txt").read_text() == SECRET
