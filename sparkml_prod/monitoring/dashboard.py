"""The monitoring dashboard: one static HTML page of a model's monitoring history over time.

:func:`write_dashboard` reads the history table (:mod:`sparkml_prod.monitoring.history`)
of one model, keeps the latest measurement of each date, variant, metric and feature
(:func:`~sparkml_prod.monitoring.history.latest_measurements`), collects those few
aggregated rows and draws them with matplotlib's Agg canvas, as the training report does;
the PNGs are embedded as data URIs, so the page needs nothing else to render.

What each section reads
-----------------------
=========================  ==============================================================
section                    history rows
=========================  ==============================================================
Latest run                 the last run's (by ``computed_at``) rows with status warn/alert
Feature drift (PSI)        ``metric == 'psi'``: a heat map, features x as-of dates
Score distribution         ``metric == 'score_share'``, ``feature == 'score'`` (below),
                           per date against the reference
Realised AUC               ``metric == 'roc_auc'`` per variant; ``metric ==
                           'auc_difference'`` (challenger vs champion) with its interval
Holdout uplift             ``metric == 'uplift'`` with its interval
Row counts                 ``metric == 'row_count'`` per variant
=========================  ==============================================================

An interval is the record's ``detail`` as JSON ``{"low": ..., "high": ...}``. A record
whose ``value`` is null (pending) is not drawn. A section without data shows a short
"no data yet" note instead of a plot.

The score-share convention
--------------------------
The score distribution of a date is one row per bin: ``metric = 'score_share'``,
``feature = 'score'``, ``value`` the share of that date's scored rows in the bin (the
shares of a date sum to 1), and ``detail`` the bin as JSON::

    {"bin": 0, "edge_low": 0.0, "edge_high": 0.1}

``bin`` counts from 0; a bin holds ``edge_low <= score < edge_high``, and an outer edge
may be ``-Infinity`` / ``Infinity`` (or null), which is drawn at the nearest finite edge
(0 or 1 for a probability). The reference is the same bins' shares on the training
scores, given as ``reference_score = (edges, shares)`` with ``len(edges) ==
len(shares) + 1``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkml_prod.modeling.report import _render, _table
from sparkml_prod.monitoring.history import (
    collect_records,
    latest_measurements,
    latest_run,
    read_history,
)
from sparkml_prod.monitoring.records import MetricRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_dashboard", "PLOTTED_METRICS", "SCORE_SHARE"]

SCORE_SHARE = "score_share"
PLOTTED_METRICS = ("psi", SCORE_SHARE, "roc_auc", "auc_difference", "uplift", "row_count")
_MAX_DISTRIBUTIONS = 6  # dates drawn in the score distribution: the latest ones
_MAX_DATE_TICKS = 12

Reference = tuple[list[float], list[float]]
Draw = Callable[["Figure"], None]


def write_dashboard(
    spark: SparkSession,
    history_table: str,
    model_name: str,
    out_dir: str,
    reference_score: Reference | None = None,
) -> str:
    """Write ``dashboard.html``: the monitoring history of one model, self-contained.

    Parameters
    ----------
    spark : SparkSession
    history_table : str
        The monitoring history (path or catalog name); an absent table is an empty one.
    model_name : str
        Whose rows to show.
    out_dir : str
        A local directory, created when missing; ``dashboard.html`` in it is replaced.
    reference_score : (edges, shares), optional
        The training score distribution in the monitoring bins (module docs), drawn
        under each date's distribution.

    Returns
    -------
    str
        The path of ``dashboard.html``.

    Examples
    --------
    >>> write_dashboard(spark, "demo-output/monitoring/history", "churn",
    ...                 "demo-output/monitoring/dashboard")  # doctest: +SKIP
    'demo-output/monitoring/dashboard/dashboard.html'
    """
    if reference_score is not None:
        ref_edges, ref_shares = reference_score
        if len(ref_edges) != len(ref_shares) + 1:
            raise ValueError(
                "The 'reference_score' parameter of write_dashboard must be (edges, shares) "
                f"with one edge more than shares. Got {len(ref_edges)} edges and "
                f"{len(ref_shares)} shares instead."
            )
    history = read_history(spark, history_table, model_name=model_name)
    run = latest_run(history)
    plotted = collect_records(
        latest_measurements(history.where(F.col("metric").isin(list(PLOTTED_METRICS))))
    )
    flagged = (
        collect_records(
            history.where((F.col("run_id") == run[0]) & F.col("status").isin("warn", "alert"))
        )
        if run is not None
        else []
    )
    by_metric: dict[str, list[MetricRecord]] = defaultdict(list)
    for record in plotted:
        if record.value is not None and math.isfinite(record.value):
            by_metric[record.metric].append(record)

    psi, shares = by_metric["psi"], [r for r in by_metric[SCORE_SHARE] if r.feature == "score"]
    auc, difference = by_metric["roc_auc"], by_metric["auc_difference"]
    uplift, counts = by_metric["uplift"], by_metric["row_count"]
    sections: list[tuple[str, Draw | None]] = [
        ("Feature drift (PSI)", (lambda fig: _plot_psi(fig, psi)) if psi else None),
        (
            "Score distribution",
            (lambda fig: _plot_scores(fig, shares, reference_score)) if shares else None,
        ),
        (
            "Realised AUC per variant",
            (lambda fig: _plot_auc(fig, auc, difference)) if auc or difference else None,
        ),
        ("Holdout uplift", (lambda fig: _plot_uplift(fig, uplift)) if uplift else None),
        ("Row counts", (lambda fig: _plot_counts(fig, counts)) if counts else None),
    ]
    rendered = [(title, None if draw is None else _render(draw)) for title, draw in sections]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "dashboard.html")
    with open(path, "w", encoding="utf-8") as out:
        out.write(_html(model_name, history_table, run, plotted, flagged, rendered))
    return path


# --- plots ----------------------------------------------------------------------------


def _dates(records: Sequence[MetricRecord]) -> list[dt.date]:
    return sorted({r.as_of for r in records})


def _date_axis(ax: Axes, dates: Sequence[dt.date]) -> None:
    """Dates as evenly spaced categories, at most a dozen labels, readable."""
    step = max(1, math.ceil(len(dates) / _MAX_DATE_TICKS))
    ticks = list(range(0, len(dates), step))
    ax.set_xticks(ticks, [dates[i].isoformat() for i in ticks], rotation=30, ha="right")
    ax.set_xlim(-0.5, len(dates) - 0.5)
    ax.set_xlabel("as-of date")


def _interval(record: MetricRecord) -> tuple[float, float] | None:
    payload = _payload(record)
    low, high = payload.get("low"), payload.get("high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return float(low), float(high)
    return None


def _payload(record: MetricRecord) -> dict[str, Any]:
    try:
        payload = json.loads(record.detail or "{}")
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _by_variant(records: Sequence[MetricRecord]) -> dict[str, list[MetricRecord]]:
    groups: dict[str, list[MetricRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.variant, r.as_of)):
        groups[record.variant].append(record)
    return dict(groups)


def _series(
    ax: Axes, records: Sequence[MetricRecord], dates: Sequence[dt.date], intervals: bool
) -> None:
    """One line per variant over the date categories, with error bars where known."""
    position = {d: i for i, d in enumerate(dates)}
    groups = _by_variant(records)
    offsets = np.linspace(-0.08, 0.08, len(groups)) if len(groups) > 1 else [0.0]
    for (variant, group), offset in zip(groups.items(), offsets, strict=True):
        rows = [(r, r.value) for r in group if r.value is not None]
        x = [position[r.as_of] + offset for r, _ in rows]
        y = [float(value) for _, value in rows]
        bounds = [_interval(r) if intervals else None for r, _ in rows]
        lower = [v - b[0] if b else 0.0 for v, b in zip(y, bounds, strict=True)]
        upper = [b[1] - v if b else 0.0 for v, b in zip(y, bounds, strict=True)]
        if any(b is not None for b in bounds):
            ax.errorbar(x, y, yerr=[lower, upper], marker="o", capsize=4, label=variant)
        else:
            ax.plot(x, y, marker="o", label=variant)
    _date_axis(ax, dates)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _plot_psi(fig: Figure, records: Sequence[MetricRecord]) -> None:
    dates = _dates(records)
    several = len({r.variant for r in records}) > 1
    label = (lambda r: f"{r.feature} ({r.variant})") if several else (lambda r: str(r.feature))
    rows = sorted({label(r) for r in records})
    grid = np.full((len(rows), len(dates)), np.nan)
    status: dict[tuple[int, int], str] = {}
    for r in records:
        i, j = rows.index(label(r)), dates.index(r.as_of)
        grid[i, j] = r.value
        status[i, j] = r.status
    fig.set_size_inches(min(14.0, 6.0 + 0.6 * len(dates)), min(30.0, 2.4 + 0.4 * len(rows)))
    ax = fig.add_subplot()
    alerts = [r.alert for r in records if r.alert is not None]
    top = max([float(np.nanmax(grid)), *alerts, 0.25])
    image = ax.imshow(grid, cmap="YlOrRd", vmin=0.0, vmax=top, aspect="auto")
    fig.colorbar(image, ax=ax, label="PSI")
    ax.set_yticks(range(len(rows)), rows, fontsize=8 if len(rows) > 20 else 10)
    _date_axis(ax, dates)
    if len(rows) * len(dates) <= 400:
        for (i, j), state in status.items():
            weight = "bold" if state in ("warn", "alert") else "normal"
            text = f"{grid[i, j]:.2f}" + ("!" if state == "alert" else "")
            dark = grid[i, j] > 0.6 * top
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9 if len(dates) <= 12 else 7,
                fontweight=weight,
                color="white" if dark else "black",
            )
    else:  # too many cells to label: mark the alerts only
        marked = [(j, i) for (i, j), state in status.items() if state == "alert"]
        if marked:
            columns, lines = zip(*marked, strict=True)
            ax.scatter(columns, lines, marker="x", color="white", s=12)
    flag = "(! = alert)" if len(rows) * len(dates) <= 400 else "(x = alert)"
    ax.set_title(f"PSI per feature and as-of date {flag}")


def _finite_edges(low: list[float | None], high: list[float | None]) -> list[float]:
    """Bin edges from the bins' low/high, an infinite or missing outer edge made finite."""
    edges = [*low, high[-1]]
    finite = [e for e in edges if e is not None and math.isfinite(e)]
    lo, hi = min([0.0, *finite]), max([1.0, *finite])
    return [lo if e is None or e == -math.inf else hi if e == math.inf else e for e in edges]


def _plot_scores(fig: Figure, records: Sequence[MetricRecord], reference: Reference | None) -> None:
    ax = fig.add_subplot()
    fig.set_size_inches(9.0, 4.8)
    per_date: dict[tuple[dt.date, str], dict[int, tuple[float, float | None, float | None]]]
    per_date = defaultdict(dict)
    for r in records:
        payload = _payload(r)
        if isinstance(payload.get("bin"), int) and r.value is not None:
            per_date[r.as_of, r.variant][payload["bin"]] = (
                r.value,
                payload.get("edge_low"),
                payload.get("edge_high"),
            )
    keys = sorted(per_date)[-_MAX_DISTRIBUTIONS:]
    several = len({variant for _, variant in keys}) > 1
    from matplotlib import colormaps

    colours = [colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, max(1, len(keys)))]
    for (as_of, variant), colour in zip(keys, colours, strict=False):
        bins = per_date[as_of, variant]
        order = sorted(bins)
        edges = _finite_edges([bins[b][1] for b in order], [bins[b][2] for b in order])
        label = f"{as_of.isoformat()} {variant}" if several else as_of.isoformat()
        ax.stairs([bins[b][0] for b in order], edges, color=colour, linewidth=1.5, label=label)
    if reference is not None:
        ax.stairs(
            reference[1],
            _finite_edges(list(reference[0][:-1]), list(reference[0][1:])),
            color="black",
            linestyle="--",
            linewidth=2,
            label="reference (training)",
        )
    shown = f"latest {len(keys)} of {len(per_date)}" if len(per_date) > len(keys) else "all"
    ax.set(
        xlabel="Score",
        ylabel="Share of scored rows",
        title=f"Score distribution per as-of date ({shown} dates)",
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _plot_auc(fig: Figure, auc: Sequence[MetricRecord], difference: Sequence[MetricRecord]) -> None:
    dates = _dates([*auc, *difference])
    fig.set_size_inches(9.0, 7.0 if difference else 4.4)
    axes = fig.subplots(2 if difference else 1, 1, sharex=True, squeeze=False)[:, 0]
    if auc:
        _series(axes[0], auc, dates, intervals=True)
    else:
        axes[0].text(0.5, 0.5, "no realised AUC yet", ha="center", transform=axes[0].transAxes)
    axes[0].set(ylabel="ROC AUC", title="Realised ROC AUC per variant")
    if difference:
        _series(axes[1], difference, dates, intervals=True)
        axes[1].axhline(0.0, color="grey", linestyle="--", linewidth=1)
        axes[1].set(ylabel="AUC difference", title="AUC difference with its interval")
        axes[0].set_xlabel("")


def _plot_uplift(fig: Figure, records: Sequence[MetricRecord]) -> None:
    fig.set_size_inches(9.0, 4.4)
    ax = fig.add_subplot()
    overall = [r for r in records if r.feature is None]  # per-decile rows have a feature
    _series(ax, overall, _dates(records), intervals=True)
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set(ylabel="Uplift vs holdout", title="Uplift against the hashed holdout, with interval")


def _plot_counts(fig: Figure, records: Sequence[MetricRecord]) -> None:
    fig.set_size_inches(9.0, 4.0)
    ax = fig.add_subplot()
    _series(ax, records, _dates(records), intervals=False)
    ax.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    ax.set_ylim(0, 1.15 * max(float(r.value or 0.0) for r in records) or 1.0)
    ax.set(ylabel="Rows scored", title="Row count per as-of date")


# --- HTML -----------------------------------------------------------------------------

_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
    "p.empty{color:#666;font-style:italic}</style>"
)


def _number(value: float | None) -> str:
    return "-" if value is None else format(value, ".6g")


def _html(
    model_name: str,
    table: str,
    run: tuple[str, dt.datetime] | None,
    plotted: Sequence[MetricRecord],
    flagged: Sequence[MetricRecord],
    images: Sequence[tuple[str, bytes | None]],
) -> str:
    title = f"Monitoring: {model_name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>{_STYLE}</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if run is None:
        parts.append(
            f"<p>No monitoring run yet for model {html.escape(model_name)} in "
            f"{html.escape(table)}.</p>"
        )
    else:
        dates = _dates(plotted)
        span = f"{dates[0].isoformat()} to {dates[-1].isoformat()}" if dates else "none"
        versions = ", ".join(str(v) for v in sorted({r.model_version for r in plotted})) or "-"
        parts.append(
            f"<p>Latest run <code>{html.escape(run[0])}</code>, computed "
            f"{run[1].isoformat(sep=' ', timespec='seconds')} UTC. As-of dates: {span}. "
            f"Model versions: {html.escape(versions)}. History: {html.escape(table)}.</p>"
        )
    parts.append("<h2>Latest run: warnings and alerts</h2>")
    if flagged:
        order = sorted(flagged, key=lambda r: (r.status != "alert", r.as_of, r.variant, r.metric))
        header = [
            "status",
            "as_of",
            "version",
            "variant",
            "metric",
            "feature",
            "value",
            "warn",
            "alert",
            "detail",
        ]
        rows = [
            [
                r.status,
                r.as_of.isoformat(),
                r.model_version,
                r.variant,
                r.metric,
                r.feature or "-",
                _number(r.value),
                _number(r.warn),
                _number(r.alert),
                r.detail or "",
            ]
            for r in order
        ]
        parts.append(_table(header, rows))
    else:
        parts.append('<p class="empty">No warnings or alerts in the latest run.</p>')
    for caption, png in images:
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        if png is None:
            parts.append('<p class="empty">No data yet.</p>')
            continue
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"></figure>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
