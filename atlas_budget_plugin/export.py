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
* HTML: every cell and the title are HTML-escaped.
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
from .types import UsageSummary

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


def rows_of(report: Report) -> list[dict[str, Any]]:
    """A report as a list of flat rows (nested summaries become ``current.total_cost`` etc.)."""
    if isinstance(report, BaseModel):
        row = _flat(report)
        if isinstance(report, UsageSummary):
            row["average_cost"] = report.average_cost
        return [row]
    return [_flat(item) for item in report]


def _json_value(value: Any) -> Any:
    if isinstance(value, (Decimal, datetime)):
        return _cell(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def render(report: Report, fmt: str, title: str = "") -> str:
    """Render ``report`` in ``fmt`` (json, csv, markdown, html)."""
    if fmt not in FORMATS:
        raise ValidationError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    rows = rows_of(report)
    columns = list(rows[0]) if rows else []
    if fmt == "json":
        data = [{k: _json_value(v) for k, v in row.items()} for row in rows]
        single = isinstance(report, BaseModel)
        return json.dumps(data[0] if single else data, indent=2, sort_keys=True) + "\n"
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

    def esc(text: str) -> str:
        return html.escape(visible(text))

    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_cell(row[c]))}</td>" for c in columns) + "</tr>" for row in rows)
    caption = f"<caption>{esc(title)}</caption>" if title else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{esc(title or 'budget report')}</title></head><body>\n"
        f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n</body></html>\n"
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
