"""Reports as JSON, CSV, Markdown or HTML: money as exact decimal strings, HTML escaped."""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from .exceptions import ValidationError
from .types import UsageSummary

FORMATS = ("json", "csv", "markdown", "html")

#: A report is one result (a summary, comparison, projection, policy...) or a list of rows.
Report = BaseModel | Sequence[BaseModel]


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
        writer.writerow(columns)
        writer.writerows([[_cell(row[c]) for c in columns] for row in rows])
        return out.getvalue()
    if fmt == "markdown":

        def md(text: str) -> str:
            return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

        lines = [f"## {md(title)}", ""] if title else []
        if columns:
            lines.append("| " + " | ".join(md(c) for c in columns) + " |")
            lines.append("|" + "|".join(" --- " for _ in columns) + "|")
            lines += ["| " + " | ".join(md(_cell(row[c])) for c in columns) + " |" for row in rows]
        else:
            lines.append("(no rows)")
        return "\n".join(lines) + "\n"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row[c]))}</td>" for c in columns) + "</tr>" for row in rows
    )
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{html.escape(title or 'budget report')}</title></head><body>\n"
        f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n</body></html>\n"
    )


def trend_svg(points: Sequence[Any], title: str) -> str:
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
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" fill="#3b82f6">'
            f"<title>{label}</title></rect>"
        )
        if len(points) <= 16 or i % max(1, len(points) // 8) == 0:
            bars.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{height - pad + 16}" font-size="10" text-anchor="middle">'
                f"{point.start:%m-%d}</text>"
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif">\n<text x="{pad}" y="24" font-size="14">{html.escape(title)}</text>\n'
        f'<text x="{pad}" y="{pad - 6}" font-size="10">max {_cell(peak)}</text>\n'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>\n'
        + "\n".join(bars)
        + "\n</svg>\n"
    )
