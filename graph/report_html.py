"""Render `warden report --html`: one self-contained page, charts as inline SVG.

No scripts, fonts or stylesheets are fetched: the page opens from a file, offline, in
any browser, and every number shown is also text (for search and screen readers).
"""

from __future__ import annotations

from html import escape
from typing import Any

BAR_HEIGHT = 22
CHART_WIDTH = 520
LABEL_WIDTH = 150
COLOURS = {"completed": "#2e7d32", "error": "#c62828"}
DEFAULT_COLOUR = "#ef6c00"


def bar_chart(
    title: str, values: dict[str, float], fmt: str = "g", full: float | None = None
) -> str:
    """Return a horizontal bar chart as an inline SVG figure (its values as text too).

    Bars are scaled to `full` when given (e.g. 100 for percentages), else to the largest.
    """
    if not values:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="none">none</p></figure>'
    top = full or max(values.values()) or 1
    span = CHART_WIDTH - LABEL_WIDTH - 90
    rows = []
    for i, (label, value) in enumerate(values.items()):
        y = i * (BAR_HEIGHT + 6)
        width = max(span * value / top, 1)
        colour = COLOURS.get(label, DEFAULT_COLOUR)
        rows.append(
            f'<text x="0" y="{y + 15}" class="label">{escape(label)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" '
            f'fill="{colour}"><title>{escape(label)}: {format(value, fmt)}</title></rect>'
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + 15}" class="value">'
            f"{format(value, fmt)}</text>"
        )
    height = len(values) * (BAR_HEIGHT + 6)
    return (
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">{"".join(rows)}</svg></figure>'
    )


def _stat(label: str, value: str, key: str) -> str:
    return f'<div class="stat"><span>{escape(label)}</span><b id="{key}">{escape(value)}</b></div>'


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_html(data: dict[str, Any]) -> str:
    """Return the report page for an `aggregate` result."""
    rate = data["success_rate"]
    stats = "".join(
        [
            _stat("runs", str(data["runs"]), "runs"),
            _stat("success rate", "-" if rate is None else f"{rate:.1%}", "success-rate"),
            _stat("p50 duration (s)", _opt(data["duration_seconds"]["p50"], ".3f"), "p50"),
            _stat("p95 duration (s)", _opt(data["duration_seconds"]["p95"], ".3f"), "p95"),
            _stat("cost per run ($)", _opt(data["cost_usd"]["per_run"], ".6f"), "cost-per-run"),
            _stat("total cost ($)", f"{data['cost_usd']['total']:.6f}", "cost-total"),
        ]
    )
    tools = data["tools"]
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{t['calls']}</td><td>{t['errors']}</td>"
        f"<td>{t['error_rate']:.1%}</td></tr>"
        for name, t in tools.items()
    )
    charts = "".join(
        [
            bar_chart("Runs by status", data["by_status"]),
            bar_chart("Halts by reason", data["halts_by_reason"]),
            bar_chart(
                "Tool error rate (%)",
                {name: round(t["error_rate"] * 100, 1) for name, t in tools.items()},
                full=100,
            ),
        ]
    )
    since = escape(str(data.get("since") or "all time"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Warden report ({since})</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
.stats {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.stat {{ border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; }}
.stat span {{ display: block; color: #666; font-size: 12px; }}
.stat b {{ font-size: 20px; }}
figure {{ margin: 1.5em 0; }} figcaption {{ font-weight: 600; margin-bottom: .5em; }}
svg .label, svg .value {{ font: 12px system-ui, sans-serif; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: .3em .8em; }}
</style></head>
<body>
<h1>Warden report</h1>
<p>Runs updated within: {since}. Durations are active time (waiting for a human excluded).</p>
<div class="stats">{stats}</div>
{charts}
<h2>Tools</h2>
<table id="tools"><tr><th>tool</th><th>calls</th><th>errors</th><th>error rate</th></tr>{rows}</table>
</body></html>
"""
