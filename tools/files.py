"""Workspace file tools: `list_files`, `read_file`, `write_file`, confined to one root.

The model's path is untrusted. Confinement is enforced twice:

1. Lexically and by resolution: absolute paths and NUL bytes are refused, then the path
   is resolved with every symlink followed (`os.path.realpath`) and must stay inside the
   resolved root. A symlink that points inside the root is fine; one that points outside
   (the file itself or any parent directory) is refused.
2. At open time: the resolved, symlink-free path is opened one component at a time from
   a descriptor of the root, each with `O_NOFOLLOW`, so a symlink swapped in between the
   check and the open (a race) makes the open fail instead of escaping.

Hard links cannot be told apart from the original file, so a regular file with more
than one link (`st_nlink > 1`) is refused for reading and writing: it may alias a file
outside the workspace. Only regular files are read or written (no FIFOs or devices,
which could block or leak), and reads and writes have size caps.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from tools.errors import ToolError, ToolRefused
from tools.registry import Reconciled, ToolSpec

DEFAULT_MAX_READ_BYTES = 256 * 1024
DEFAULT_MAX_WRITE_BYTES = 256 * 1024
MAX_LIST_ENTRIES = 500
MAX_PATH_CHARS = 1024

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# O_NONBLOCK: opening a FIFO must not hang the tool; regular files ignore it.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
# No O_TRUNC: the file is checked (regular, one link) before it is truncated.
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListFilesArgs(_Args):
    path: str = Field(
        default=".", max_length=MAX_PATH_CHARS, description="Directory inside the workspace."
    )


class ReadFileArgs(_Args):
    path: str = Field(
        min_length=1, max_length=MAX_PATH_CHARS, description="File path inside the workspace."
    )


def _write_args(max_write_bytes: int) -> type[BaseModel]:
    class WriteFileArgs(_Args):
        path: str = Field(
            min_length=1,
            max_length=MAX_PATH_CHARS,
            description="File path inside the workspace; missing parent directories are created.",
        )
        # A character is at least one UTF-8 byte, so this bounds the size before encoding.
        content: str = Field(
            max_length=max_write_bytes,
            description=f"The full new text of the file (at most {max_write_bytes} bytes, UTF-8).",
        )

    return WriteFileArgs


def confined_parts(root: Path, relative: str) -> tuple[str, ...]:
    """Return the symlink-free components of `relative` under `root`, or refuse it."""
    if "\x00" in relative:
        raise ToolRefused("paths may not contain NUL bytes")
    if os.path.isabs(relative):
        raise ToolRefused(
            f"absolute paths are not allowed: {relative!r}; use a path relative to the workspace"
        )
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, relative or "."))
    if target != base and not target.startswith(base.rstrip(os.sep) + os.sep):
        raise ToolRefused(f"path {relative!r} escapes the workspace")
    return PurePosixPath(os.path.relpath(target, base)).parts if target != base else ()


@contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _os_errors(relative: str) -> Iterator[None]:
    """Report unexpected file-system errors (permissions, full disk) as tool errors."""
    try:
        yield
    except OSError as exc:
        raise ToolError(f"{relative!r}: {exc.strerror or exc}") from None


def _raced(relative: str) -> ToolRefused:
    return ToolRefused(f"path {relative!r} changed while it was opened (a symlink?); refused")


def _open_dir(root: Path, parts: tuple[str, ...], relative: str, *, create: bool = False) -> int:
    """Open the directory `parts` under root, one component at a time, following nothing."""
    fd = os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise ToolError(f"no such directory: {relative!r}") from None
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    raise _raced(relative) from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):
                    raise _raced(relative) from None
                if exc.errno == errno.ENOTDIR:
                    # Linux reports a symlink opened with O_DIRECTORY | O_NOFOLLOW as ENOTDIR.
                    if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise _raced(relative) from None
                    raise ToolError(f"not a directory: {relative!r}") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_regular(fd: int, relative: str) -> os.stat_result:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise ToolError(f"{relative!r} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise ToolRefused(f"{relative!r} is not a regular file")
    if info.st_nlink > 1:
        raise ToolRefused(
            f"{relative!r} has {info.st_nlink} hard links and may alias a file outside "
            "the workspace; refused"
        )
    return info


def list_dir(root: Path, relative: str) -> str:
    """List one workspace directory (directories end with `/`; dotfiles are hidden)."""
    parts = confined_parts(root, relative)
    with _fd(_open_dir(root, parts, relative)) as fd:
        with os.scandir(fd) as entries:
            names = sorted(
                f"{e.name}/" if e.is_dir(follow_symlinks=False) else e.name
                for e in entries
                if not e.name.startswith(".")
            )
    shown = names[:MAX_LIST_ENTRIES]
    if len(names) > len(shown):
        shown.append(f"... ({len(names) - len(shown)} more entries not shown)")
    return "\n".join(shown) or "(empty)"


def read_text(root: Path, relative: str, max_bytes: int) -> str:
    """Read a UTF-8 text file of at most `max_bytes` from the workspace."""
    parts = confined_parts(root, relative)
    if not parts:
        raise ToolError(f"{relative!r} is a directory, not a file")
    with _fd(_open_dir(root, parts[:-1], relative)) as parent:
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            raise ToolError(f"no such file: {relative!r}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _raced(relative) from None
            raise ToolError(f"cannot open {relative!r}: {exc.strerror}") from None
        with _fd(fd):
            info = _check_regular(fd, relative)
            if info.st_size > max_bytes:
                raise ToolRefused(
                    f"file {relative!r} is {info.st_size} bytes, larger than the "
                    f"{max_bytes}-byte read limit"
                )
            chunks: list[bytes] = []
            size = 0
            while size <= max_bytes:  # the file may grow after the fstat
                chunk = os.read(fd, min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    if size > max_bytes:
        raise ToolRefused(f"file {relative!r} is larger than the {max_bytes}-byte read limit")
    data = b"".join(chunks)
    if b"\x00" in data:
        raise ToolRefused(f"file {relative!r} looks binary; only text files can be read")
    return data.decode("utf-8", errors="replace")


def write_text(root: Path, relative: str, content: str, max_bytes: int) -> str:
    """Create or overwrite a workspace file, creating parent directories inside the root."""
    data = content.encode("utf-8")
    if len(data) > max_bytes:
        raise ToolRefused(
            f"content is {len(data)} bytes, larger than the {max_bytes}-byte write limit"
        )
    parts = confined_parts(root, relative)
    if not parts:
        raise ToolError(f"{relative!r} is a directory, not a file")
    with _fd(_open_dir(root, parts[:-1], relative, create=True)) as parent:
        try:
            fd = os.open(parts[-1], _WRITE_FLAGS, 0o644, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _raced(relative) from None
            if exc.errno == errno.EISDIR:
                raise ToolError(f"{relative!r} is a directory, not a file") from None
            raise ToolError(f"cannot open {relative!r} for writing: {exc.strerror}") from None
        with _fd(fd):
            _check_regular(fd, relative)
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    return wrote(parts, data)


def wrote(parts: tuple[str, ...], data: bytes) -> str:
    """Return `write_file`'s result text."""
    return f"wrote {len(data)} bytes to {'/'.join(parts)}"


def reconcile_write(root: Path, relative: str, content: str) -> Reconciled:
    """Tell whether an in-doubt `write_file` took effect: the file already has the content.

    Anything else (missing, different, unreadable) is `absent`: the write replaces the
    whole file, so running it again is safe.
    """
    data = content.encode("utf-8")
    try:
        current = read_text(root, relative, len(data) + 1)
    except (ToolError, OSError):
        return Reconciled("absent")
    if current.encode("utf-8") != data:
        return Reconciled("absent")
    return Reconciled("done", wrote(confined_parts(root, relative), data))


def file_tools(
    root: Path,
    *,
    max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
    max_write_bytes: int = DEFAULT_MAX_WRITE_BYTES,
) -> list[ToolSpec]:
    """Return `list_files`, `read_file` (tier read) and `write_file` (tier write) under `root`."""
    if max_read_bytes <= 0 or max_write_bytes <= 0:
        raise ValueError("max_read_bytes and max_write_bytes must be > 0")
    root = Path(root)

    def list_files(path: str = ".") -> str:
        """List the files and directories at a path in the workspace (directories end with /)."""
        with _os_errors(path):
            return list_dir(root, path)

    def read_file(path: str) -> str:
        """Read a UTF-8 text file from the workspace. Large and binary files are refused."""
        with _os_errors(path):
            return read_text(root, path, max_read_bytes)

    def write_file(path: str, content: str) -> str:
        """Create or overwrite a text file in the workspace with the given content."""
        with _os_errors(path):
            return write_text(root, path, content, max_write_bytes)

    return [
        ToolSpec(
            tool=StructuredTool.from_function(list_files, args_schema=ListFilesArgs),
            tier="read",
            scopes=frozenset({"workspace:read"}),
            idempotent=True,
        ),
        ToolSpec(
            tool=StructuredTool.from_function(read_file, args_schema=ReadFileArgs),
            tier="read",
            scopes=frozenset({"workspace:read"}),
            idempotent=True,
        ),
        ToolSpec(
            tool=StructuredTool.from_function(write_file, args_schema=_write_args(max_write_bytes)),
            tier="write",
            scopes=frozenset({"workspace:write"}),
            idempotent=True,
            reconcile=lambda args, _key: reconcile_write(root, args["path"], args["content"]),
        ),
    ]
