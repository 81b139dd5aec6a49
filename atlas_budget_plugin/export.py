"""Reports as JSON, CSV, Markdown or HTML: money as exact decimal strings, every format safe to open.

Text that came from users (names, scopes, tags, messages) is untrusted in every format:

* control characters are written visibly (``\\x1b``, ``\\n``) in CSV, Markdown and HTML (JSON escapes
  them itself), so an export printed to a terminal cannot send it escape sequences;
* CSV: a text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'``
  (OWASP's advice against formula injection), so a spreadsheet shows it as text instead of running it.
  Numbers (money, counts, percents) are written as they are: a number such as ``-1.50`` (a negative
  change in ``report compare``) is not a formula, and stays a number in the spreadsheet;
* Markdown: ``<``, ``>`` and ``&`` become HTML entities and ``\\ ` * _ [ ] ~ |`` are backslash-escaped, so
  neither HTML such as ``<script>`` nor links, emphasis or code reach the rendered page;
* HTML: every cell, heading and the title are HTML-escaped; the page is self-contained (inline CSS, no
  script, no external resource, and a Content-Security-Policy that forbids loading any).

A JSON export of one result carries the report's title as its ``title`` field; a list of rows stays a
JSON list (what scripts read), or becomes ``{"title": ..., "rows": [...]}`` with ``envelope=True``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from .exceptions import ValidationError
from .types import SpendRow, average

FORMATS = ("json", "csv", "markdown", "html")

#: CSV cells starting with one of these are formulas to a spreadsheet (OWASP CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: Markdown characters that would format, link or break a table cell.
MARKDOWN_SPECIALS = "\\`*_[]~|"

#: A report is one result (a summary, comparison, projection, policy...) or a list of rows.
Report = BaseModel | Sequence[BaseModel]


def visible(text: str) -> str:
    """``text`` with every non-printable character (control characters, terminal escapes, bidi overrides,
    lone surrogates) written as its Python escape, e.g. ``\\x1b[31m`` -> ``\\\\x1b[31m``: safe for a terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def csv_cell(value: Any) -> str:
    """A CSV cell: numbers as they are, text made visible and prefixed with ``'`` if a spreadsheet would
    take it for a formula."""
    text = _cell(value)
    if _finite_number(value):
        return text
    text = visible(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _finite_number(value: Any) -> bool:
    if isinstance(value, Decimal):
        return value.is_finite()
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int)  # bool too: True/False are safe


def markdown_text(text: str) -> str:
    """Text for a Markdown table cell or heading: no HTML, no formatting, no table breaks."""
    text = html.escape(visible(text), quote=False)
    return "".join("\\" + ch if ch in MARKDOWN_SPECIALS else ch for ch in text)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps({k: _cell(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


def _flat(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            row.update(_flat(value, f"{prefix}{name}."))
        else:
            row[f"{prefix}{name}"] = value
    return row


def _row(model: BaseModel) -> dict[str, Any]:
    row = _flat(model)
    if isinstance(model, SpendRow):
        # A breakdown by several dimensions gets a column per dimension; by one, ``key`` already says it.
        keys = row.pop("keys", None) or {}
        if len(keys) > 1:
            row = {**{name: value for name, value in keys.items()}, **row}
    return row


def rows_of(report: Report) -> list[dict[str, Any]]:
    """A report as a list of flat rows (nested summaries become ``current.total_cost`` etc.)."""
    if isinstance(report, BaseModel):
        return [_row(report)]
    return [_row(item) for item in report]


def _json_value(value: Any) -> Any:
    if isinstance(value, (Decimal, datetime)):
        return _cell(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def render(report: Report, fmt: str, title: str = "", *, envelope: bool = False) -> str:
    """Render ``report`` in ``fmt`` (json, csv, markdown, html).

    JSON: one result is an object, with ``title`` when one is given; a list of rows is a list,
    or ``{"title": ..., "rows": [...]}`` when ``envelope`` is set. HTML: a styled, self-contained
    page with a summary section (see :func:`html_report`).
    """
    if fmt not in FORMATS:
        raise ValidationError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "html":
        return html_report(title, [("", report)])
    rows = rows_of(report)
    columns = list(rows[0]) if rows else []
    if fmt == "json":
        data = [{k: _json_value(v) for k, v in row.items()} for row in rows]
        document: Any
        if isinstance(report, BaseModel):
            document = {**data[0], "title": title} if title else data[0]
        else:
            document = {"title": title, "rows": data} if envelope else data
        return json.dumps(document, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([csv_cell(c) for c in columns])
        writer.writerows([[csv_cell(row[c]) for c in columns] for row in rows])
        return out.getvalue()
    if fmt == "markdown":
        md = markdown_text
        lines = [f"## {md(title)}", ""] if title else []
        if columns:
            lines.append("| " + " | ".join(md(c) for c in columns) + " |")
            lines.append("|" + "|".join(" --- " for _ in columns) + "|")
            lines += ["| " + " | ".join(md(_cell(row[c])) for c in columns) + " |" for row in rows]
        else:
            lines.append("(no rows)")
        return "\n".join(lines) + "\n"

    raise AssertionError("unreachable")  # pragma: no cover - every format returned above


# -- HTML -----------------------------------------------------------------------------------------

#: The page's only styling, inline: a report must open anywhere, offline, without fetching anything.
HTML_STYLE = """
:root { color-scheme: light dark; --fg: #1f2933; --muted: #616e7c; --line: #d9e2ec; --head: #f0f4f8;
  --accent: #2563eb; --bad: #b91c1c; --good: #047857; }
@media (prefers-color-scheme: dark) { :root { --fg: #e4e7eb; --muted: #9aa5b1; --line: #3e4c59;
  --head: #243b53; --accent: #60a5fa; --bad: #f87171; --good: #34d399; } }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  margin: 0; padding: 2rem; }
main { max-width: 72rem; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: 0 0 1.25rem; border-bottom: 3px solid var(--accent); padding-bottom: .4rem; }
h2 { font-size: 1.1rem; margin: 1.75rem 0 .6rem; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .75rem; margin: 0; }
.summary div { border: 1px solid var(--line); border-radius: .5rem; padding: .6rem .8rem; }
.summary dt { font-size: .75rem; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
.summary dd { margin: .15rem 0 0; font-size: 1.15rem; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.summary .bad dd { color: var(--bad); font-weight: 600; }
.summary .good dd { color: var(--good); }
table { border-collapse: collapse; width: 100%; margin: .25rem 0 1rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .6rem; text-align: left; vertical-align: top;
  overflow-wrap: anywhere; }
th { background: var(--head); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: color-mix(in srgb, var(--head) 40%, transparent); }
.empty { color: var(--muted); font-style: italic; }
"""

#: What the summary section shows of a single result, in this order, when the result has the field.
SUMMARY_FIELDS = (
    ("policy", "policy"),
    ("period", "period"),
    ("total_cost", "total cost"),
    ("calls", "calls"),
    ("average_cost", "average per call"),
    ("limit", "limit"),
    ("remaining", "remaining"),
    ("percent_used", "percent used"),
    ("is_over_budget", "over budget"),
    ("change", "change"),
    ("change_percent", "change %"),
    ("projected_cost", "projected cost"),
    ("projected_percent", "projected %"),
    ("summary.total_cost", "spent so far"),
    ("summary.limit", "limit"),
    ("current.total_cost", "this period"),
    ("previous.total_cost", "previous period"),
)


def _esc(value: Any) -> str:
    return html.escape(visible(_cell(value)))


def summary_items(report: Report) -> list[tuple[str, str, str]]:
    """The summary section of a report as (label, value, css class) triples.

    A single result shows its headline fields (cost, calls, limit, remaining, over budget...);
    a list of rows with costs shows how many rows there are, their total cost and calls, and the
    average cost per call. Totals are exact Decimal sums of the rows.
    """
    rows = rows_of(report)
    if isinstance(report, BaseModel):
        row = rows[0]
        items = []
        for name, label in SUMMARY_FIELDS:
            if name in row and row[name] is not None:
                value = row[name]
                css = ""
                if name == "is_over_budget":
                    css, value = ("bad", "yes") if value else ("good", "no")
                items.append((label, _cell(value), css))
        return items
    items = [("rows", str(len(rows)), "")]
    if rows and all(isinstance(r.get("total_cost"), Decimal) for r in rows):
        total = sum((r["total_cost"] for r in rows), Decimal(0))
        items.append(("total cost", _cell(total), ""))
        if all(isinstance(r.get("calls"), int) for r in rows):
            calls = sum(r["calls"] for r in rows)
            items.append(("calls", str(calls), ""))
            items.append(("average per call", _cell(average(total, calls)), ""))
    return items


def _table(report: Report, caption: str) -> str:
    rows = rows_of(report)
    cap = f"<caption>{html.escape(visible(caption))}</caption>" if caption else ""
    if not rows:
        return f'<p class="empty">(no rows)</p>{cap and f"<table>{cap}</table>"}'
    if isinstance(report, BaseModel):  # one result: a field per line reads better than one wide row
        body = "".join(
            f'<tr><th scope="row">{_esc(k)}</th><td{_num(v)}>{_esc(v)}</td></tr>' for k, v in rows[0].items()
        )
        return f"<table>{cap}<tbody>{body}</tbody></table>"
    columns = list(rows[0])
    head = "".join(f'<th scope="col">{_esc(c)}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td{_num(row.get(c))}>{_esc(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value: Any) -> str:
    return ' class="num"' if _finite_number(value) and not isinstance(value, bool) else ""


def html_report(title: str, sections: Sequence[tuple[str, Report]], summary: Report | None = None) -> str:
    """A styled, self-contained HTML page: a summary section, then one table per ``(heading, report)``.

    The summary is that of ``summary`` when given, else of the first section's report. Inline CSS only
    (light and dark), no script, no link, no image, and a Content-Security-Policy that forbids fetching
    anything, so the page can be mailed or archived and opened anywhere. All text is escaped.
    """
    heading = title or "budget report"
    items = summary_items(summary if summary is not None else sections[0][1]) if sections or summary else []
    cards = "".join(
        f'<div class="{css}"><dt>{html.escape(label)}</dt><dd>{html.escape(visible(value))}</dd></div>'
        if css
        else f"<div><dt>{html.escape(label)}</dt><dd>{html.escape(visible(value))}</dd></div>"
        for label, value, css in items
    )
    parts = [
        f'<section aria-labelledby="summary"><h2 id="summary">Summary</h2><dl class="summary">{cards}</dl></section>'
    ]
    for index, (name, report) in enumerate(sections):
        label = html.escape(visible(name)) if name else "Details"
        caption = title if len(sections) == 1 else ""
        parts.append(
            f'<section aria-labelledby="s{index}"><h2 id="s{index}">{label}</h2>{_table(report, caption)}</section>'
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(visible(heading))}</title>\n<style>{HTML_STYLE}</style></head>\n"
        f"<body><main>\n<h1>{html.escape(visible(heading))}</h1>\n" + "\n".join(parts) + "\n</main></body></html>\n"
    )


#: How a trend bucket is labelled, per granularity.
BUCKET_LABELS = {"hour": "%m-%d %H:%M", "day": "%Y-%m-%d", "week": "%G-W%V", "month": "%Y-%m"}


def bucket_label(start: datetime, granularity: str) -> str:
    """The label of a trend bucket: hour "03-10 14:00", day "2026-03-10", week "2026-W11", month "2026-03"."""
    return start.strftime(BUCKET_LABELS.get(granularity, "%Y-%m-%d %H:%M"))


def trend_svg(points: Sequence[Any], title: str, granularity: str = "day") -> str:
    """A self-contained SVG bar chart of a spend trend (no plotting library needed)."""
    width, height, pad = 640, 320, 48
    peak = max((p.total_cost for p in points), default=Decimal(0)) or Decimal(1)
    slot = (width - 2 * pad) / max(len(points), 1)
    bars = []
    for i, point in enumerate(points):
        h = float(point.total_cost / peak) * (height - 2 * pad)
        x = pad + i * slot + slot * 0.1
        y = height - pad - h
        label = html.escape(f"{point.start:%Y-%m-%d %H:%M}: {_cell(point.total_cost)} ({point.calls} calls)")
        tick = html.escape(bucket_label(point.start, granularity))
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" fill="#3b82f6">'
            f"<title>{label}</title></rect>"
        )
        if len(points) <= 16 or i % max(1, len(points) // 8) == 0:
            bars.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{height - pad + 16}" font-size="10" text-anchor="middle">'
                f"{tick}</text>"
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif">\n<text x="{pad}" y="24" font-size="14">{html.escape(visible(title))}</text>\n'
        f'<text x="{pad}" y="{pad - 6}" font-size="10">max {_cell(peak)}</text>\n'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>\n'
        + "\n".join(bars)
        + "\n</svg>\n"
    )
