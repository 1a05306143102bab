"""The benchmark harness: a list of benchmark functions, one printed line each.

A benchmark is `async def bench(env: Env) -> Line`. `bench/__main__.py` runs the
functions in `BENCHMARKS` in order, in one process, on one fresh database, and prints
one numbered line per benchmark: Warden's figure, the goal, and the stock value. To add
one, write the function in its own module under `bench/` and append it to the list.

Benchmarks that share expensive work (the sequential runs feed storage, run time and
resume) get it through `Env.once`, which runs it the first time it is asked for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def log(msg: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Return the q-quantile of the values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Env:
    """What every benchmark gets: the database, the savers and the command's options."""

    url: str
    """The fresh database for this bench run."""
    savers: dict[str, Any]
    """`warden`: Warden's saver (`open_saver`); `stock`: stock AsyncPostgresSaver."""
    args: argparse.Namespace
    """Parsed command line (`quick`, `concurrency`, `steps`, `delay`, ...)."""
    _memo: dict[str, Any] = field(default_factory=dict)

    async def once(self, key: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run `make` the first time `key` is asked for; return its result every time."""
        if key not in self._memo:
            self._memo[key] = await make()
        return self._memo[key]  # type: ignore[no-any-return]


@dataclass
class Line:
    """One benchmark's result: what it measured, Warden's figure, the goal, stock's."""

    title: str
    figure: str
    goal: str
    stock: str
    met: bool | None
    """True / False against the goal; None when there is no goal to check."""
    details: list[str] = field(default_factory=list)
    """Further lines printed under the result (breakdowns, caveats)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Raw numbers for results.json."""


Benchmark = Callable[[Env], Awaitable[Line]]


def verdict(met: bool | None) -> str:
    """Say whether a goal was met."""
    return "" if met is None else ("MET" if met else "MISSED")


def render(lines: list[Line]) -> list[str]:
    """Format the numbered result lines."""
    out: list[str] = []
    for number, line in enumerate(lines, 1):
        out.append(f"[{number}] {line.title}")
        out.append(
            f"    warden {line.figure}   goal {line.goal}  {verdict(line.met)}   stock {line.stock}"
        )
        out += [f"    {d}" for d in line.details]
    return out
