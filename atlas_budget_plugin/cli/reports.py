"""``atlas-budget usage list`` and ``report ...``: recorded calls and spend reports."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..export import bucket_label, trend_svg
from ..types import CALL_DIMENSIONS
from .core import (
    ROWS,
    TIMEZONE,
    CliError,
    Session,
    console,
    emit,
    format_option,
    generic_table,
    lit,
    main,
    money,
    output_option,
    parse_day,
    parse_pairs,
    pass_session,
    safe,
    scope_option,
    write_file,
)

# -- usage and reports --------------------------------------------------------------------------


@main.group()
def usage() -> None:
    """Recorded calls."""


@usage.command("list")
@click.option("--actor", "who", default=None)
@click.option("--provider", default=None)
@click.option("--model", default=None)
@click.option("--category", default=None)
@click.option("--since", default=None, help="From this date/time (UTC unless given).")
@click.option("--until", "until", default=None, help="Before this date/time.")
@click.option("--limit", "count", type=ROWS, default=50, show_default=True)
@format_option
@output_option
@pass_session
def usage_list(
    session: Session,
    who: str | None,
    provider: str | None,
    model: str | None,
    category: str | None,
    since: str | None,
    until: str | None,
    count: int,
    fmt: str,
    output: str | None,
) -> None:
    """The most recent recorded calls."""
    filters = {
        k: v
        for k, v in {"actor": who, "provider": provider, "model": model, "category": category}.items()
        if v is not None
    }
    records = session.services.tracking.list_usage(
        session.actor, count, filters, parse_day(since, "--since"), parse_day(until, "--until")
    )
    table = Table("recorded", "call", "actor", "provider/model", "tokens in/out", "cost", "price source", title="usage")
    for r in records:
        table.add_row(
            lit(r.recorded_at),
            lit(r.call_id),
            lit(r.actor or ""),
            lit(f"{r.provider}/{r.model}"),
            f"{r.input_tokens}/{r.output_tokens}",
            money(r.cost),
            lit(r.price_source),
        )
    emit(records, fmt, output, "usage", lambda: table)


@main.group()
def report() -> None:
    """Spend reports: summary, by dimension, trend, compare, projection."""


period_option = click.option("--period", default="month", show_default=True)
tz_option = click.option("--timezone", "tz", type=TIMEZONE, default="UTC", show_default=True)


def report_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--period, --scope, --timezone, --format and --output, shared by the period reports."""
    for option in (output_option, format_option, tz_option, scope_option, period_option):
        command = option(command)
    return command


@report.command("summary")
@report_options
@pass_session
def report_summary(
    session: Session, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """Total spend, calls and tokens in the current period (and the limit, if a policy sets one)."""
    summary = session.services.tracking.get_usage_summary(
        parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
    )
    title = f"spend this {summary.period}"
    emit(summary, fmt, output, title, lambda: generic_table(summary, title))


@report.command("by")
@click.argument("dimension", type=click.Choice(CALL_DIMENSIONS))
@report_options
@pass_session
def report_by(
    session: Session, dimension: str, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """Spend grouped by provider, model, category, actor or operation."""
    rows = session.services.tracking.get_spend_by(
        dimension, parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
    )

    def table() -> Table:
        t = Table(dimension, "calls", "cost", title=lit(f"spend by {dimension} this {period}"))
        for r in rows:
            t.add_row(lit(r.key or "-"), str(r.calls), money(r.total_cost))
        return t

    emit(rows, fmt, output, f"spend by {dimension}", table)


@report.command("trend")
@click.option("--granularity", type=click.Choice(["hour", "day", "week", "month"]), default="day", show_default=True)
@click.option("--periods", type=click.IntRange(1, 10_000), default=12, show_default=True)
@scope_option
@tz_option
@format_option
@output_option
@click.option("--chart", type=click.Path(dir_okay=False), help="Also draw the trend to FILE.svg (or FILE.png).")
@pass_session
def report_trend(
    session: Session,
    granularity: str,
    periods: int,
    scope: tuple[str, ...],
    tz: str,
    fmt: str,
    output: str | None,
    chart: str | None,
) -> None:
    """Spend per hour, day, week or month, oldest first."""
    if chart and Path(chart).suffix.lower() not in (".svg", ".png"):
        raise click.BadParameter("the chart file must end in .svg or .png", param_hint="--chart")
    points = session.services.tracking.get_spend_trend(
        parse_pairs(scope, "--scope"), periods, granularity=granularity, actor=session.actor, timezone=tz
    )
    if chart:
        draw_chart(points, Path(chart), f"spend per {granularity}", granularity)

    def table() -> Table:
        t = Table(granularity, "calls", "cost", title=f"spend per {granularity}")
        peak = max((p.total_cost for p in points), default=Decimal(0)) or Decimal(1)
        for p in points:
            bar = "█" * int(20 * p.total_cost / peak)
            t.add_row(bucket_label(p.start, granularity), str(p.calls), f"{money(p.total_cost):>14} {bar}")
        return t

    emit(points, fmt, output, f"spend per {granularity}", table)


def draw_chart(points: list[Any], path: Path, title: str, granularity: str = "day") -> None:
    """Write the trend as SVG (built in) or PNG (with the optional ``chart`` extra, matplotlib)."""
    if path.suffix.lower() == ".svg":
        write_file(path, trend_svg(points, title, granularity), "--chart")
    else:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            raise CliError(
                "PNG charts need matplotlib: pip install 'atlas-budget-plugin[chart]' (or use a .svg file)"
            ) from None
        figure, axes = pyplot.subplots(figsize=(8, 4))
        try:
            axes.bar([bucket_label(p.start, granularity) for p in points], [float(p.total_cost) for p in points])
            axes.set_title(title)
            axes.tick_params(axis="x", labelrotation=45)
            figure.tight_layout()
            figure.savefig(path.expanduser())
        except OSError as exc:
            raise CliError(f"cannot write the --chart file {str(path)!r}: {exc.strerror or exc}") from None
        finally:
            pyplot.close(figure)
    console.print(f"wrote {safe(path)}")


@report.command("compare")
@report_options
@pass_session
def report_compare(
    session: Session, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """This period so far next to the previous one."""
    comparison = session.services.tracking.compare_periods(
        parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
    )
    emit(comparison, fmt, output, f"this {period} vs the last", lambda: generic_table(comparison, "comparison"))


@report.command("projection")
@report_options
@pass_session
def report_projection(
    session: Session, period: str, scope: tuple[str, ...], tz: str, fmt: str, output: str | None
) -> None:
    """Spend so far, extrapolated to the end of the period."""
    projection = session.services.tracking.get_projection(
        parse_pairs(scope, "--scope"), period, actor=session.actor, timezone=tz
    )
    emit(
        projection,
        fmt,
        output,
        f"projection to the end of this {period}",
        lambda: generic_table(projection, "projection"),
    )
