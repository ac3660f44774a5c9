"""The training report: ``metrics.json``, PNG plots and a self-contained ``report.html``.

:func:`write_report` draws what :func:`sparkml_prod.modeling.evaluation.evaluate` computed (ROC, PR,
calibration, gains and lift, score histograms per class for test and train, feature
importance, the business profit curve) with matplotlib's object API and the Agg canvas
(no pyplot state), and embeds the PNGs as data URIs so the page renders when copied alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sparkml_prod.modeling.evaluation import REQUIRED_METRICS as _REQUIRED_METRICS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_report"]


def write_report(
    directory: str,
    metrics: Mapping[str, Any],
    *,
    title: str,
    model_description: str,
    train_histogram: Mapping[str, Any] | None = None,
    feature_importance: Mapping[str, float] | None = None,
    extra_sections: Mapping[str, object] | None = None,
) -> str:
    """Write ``metrics.json``, PNG plots and a self-contained ``report.html``.

    Parameters
    ----------
    directory : str
        A local directory, created when missing; existing files of the same names are
        replaced.
    metrics : mapping
        What :func:`evaluate` returned.
    title, model_description : str
        The report's header.
    train_histogram : mapping, optional
        :func:`score_histogram` of the training rows, drawn next to the test scores.
    feature_importance : mapping, optional
        Feature name to importance (gain); the top 30 are plotted.
    extra_sections : mapping, optional
        Section title to content, rendered as a ``<pre>`` block: JSON (indented, sorted
        keys), or the string itself when the content is a string.

    Returns
    -------
    str
        The path of ``report.html``.

    Files
    -----
    ``metrics.json`` (the metrics plus ``feature_importance`` and ``extra_sections``
    when given), ``roc.png``, ``pr.png``, ``calibration.png``, ``gains_lift.png``,
    ``score_histogram.png``, ``importance.png`` (with importances), ``profit.png`` (with
    business metrics) and ``report.html``, which embeds the PNGs as data URIs.

    Examples
    --------
    >>> path = write_report("/tmp/report", evaluate(df), title="Churn model",
    ...                     model_description="XGBoost, 300 trees")  # doctest: +SKIP
    """
    missing = [key for key in _REQUIRED_METRICS if key not in metrics]
    if missing:
        raise ValueError(
            f"The 'metrics' parameter of write_report lacks key(s) {', '.join(missing)}. "
            "Pass the dict that evaluate() returns."
        )
    os.makedirs(directory, exist_ok=True)
    document: dict[str, Any] = dict(metrics)
    if feature_importance is not None:
        document["feature_importance"] = {k: float(v) for k, v in feature_importance.items()}
    if extra_sections is not None:
        document["extra_sections"] = dict(extra_sections)
    with open(os.path.join(directory, "metrics.json"), "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2, sort_keys=True, default=str)
        out.write("\n")

    plots: list[tuple[str, str, Callable[[Figure], None]]] = [
        ("roc.png", "ROC curve", lambda fig: _plot_roc(fig, metrics)),
        ("pr.png", "Precision-recall curve", lambda fig: _plot_pr(fig, metrics)),
        ("calibration.png", "Calibration", lambda fig: _plot_calibration(fig, metrics)),
        ("gains_lift.png", "Cumulative gain and lift", lambda fig: _plot_gains(fig, metrics)),
        (
            "score_histogram.png",
            "Score distribution",
            lambda fig: _plot_histogram(fig, metrics["histogram"], train_histogram),
        ),
    ]
    if feature_importance:
        plots.append(
            (
                "importance.png",
                "Feature importance",
                lambda fig: _plot_importance(fig, feature_importance),
            )
        )
    if "business" in metrics:
        plots.append(("profit.png", "Expected profit", lambda fig: _plot_profit(fig, metrics)))
    images = []
    for name, caption, draw in plots:
        png = _render(draw)
        with open(os.path.join(directory, name), "wb") as out:
            out.write(png)
        images.append((caption, png))

    path = os.path.join(directory, "report.html")
    with open(path, "w", encoding="utf-8") as out:
        out.write(_html(metrics, title, model_description, images, extra_sections or {}))
    return path


# --- plots ----------------------------------------------------------------------------


def _render(draw: Callable[[Figure], None]) -> bytes:
    """PNG bytes of a figure drawn by ``draw`` with the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    fig.clear()
    return buffer.getvalue()


def _diagonal(ax: Axes, label: str) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label=label)


def _plot_roc(fig: Figure, metrics: Mapping[str, Any]) -> None:
    ax = fig.add_subplot()
    ax.plot(metrics["roc"]["fpr"], metrics["roc"]["tpr"], label=f"AUC {metrics['roc_auc']:.4f}")
    _diagonal(ax, "random")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    ax.legend(loc="lower right")


def _plot_pr(fig: Figure, metrics: Mapping[str, Any]) -> None:
    ax = fig.add_subplot()
    pr = metrics["pr"]
    ax.plot(pr["recall"], pr["precision"], label=f"AP {metrics['pr_auc']:.4f}")
    ax.axhline(metrics["base_rate"], linestyle="--", color="grey", linewidth=1, label="base rate")
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve", ylim=(0, 1.02))
    ax.legend(loc="upper right")


def _plot_calibration(fig: Figure, metrics: Mapping[str, Any]) -> None:
    ax = fig.add_subplot()
    rows = metrics["calibration"]
    ax.plot([r["mean_score"] for r in rows], [r["observed_rate"] for r in rows], marker="o")
    _diagonal(ax, "perfectly calibrated")
    ax.set(xlabel="Mean score", ylabel="Observed positive rate", title="Calibration")
    ax.legend(loc="upper left")


def _plot_gains(fig: Figure, metrics: Mapping[str, Any]) -> None:
    gains, lift = fig.subplots(1, 2)
    deciles = metrics["deciles"]
    depth = [0.0] + [d["decile"] / 10 for d in deciles]
    gains.plot(depth, [0.0] + [d["cumulative_gain"] for d in deciles], marker="o", label="model")
    _diagonal(gains, "random")
    gains.set(xlabel="Share of users contacted", ylabel="Share of positives", title="Gain")
    gains.legend(loc="lower right")
    index = [d["decile"] for d in deciles]
    lift.bar(index, [d["lift"] for d in deciles], color="tab:blue", alpha=0.6, label="decile")
    lift.plot(
        index,
        [d["cumulative_lift"] for d in deciles],
        color="tab:orange",
        marker="o",
        label="cumulative",
    )
    lift.axhline(1.0, linestyle="--", color="grey", linewidth=1)
    lift.legend(loc="upper right")
    lift.set(xlabel="Decile (1 = highest scores)", ylabel="Lift", title="Lift", xticks=index)


def _densities(histogram: Mapping[str, Any], key: str) -> np.ndarray:
    counts = np.asarray(histogram[key], dtype=np.float64)
    widths = np.diff(np.asarray(histogram["edges"], dtype=np.float64))
    total = counts.sum()
    return counts / (total * widths) if total else counts


def _plot_histogram(fig: Figure, test: Mapping[str, Any], train: Mapping[str, Any] | None) -> None:
    ax = fig.add_subplot()
    for name, histogram, style in (("test", test, "-"), ("train", train, "--")):
        if histogram is None:
            continue
        for key, color in (("positives", "tab:orange"), ("negatives", "tab:blue")):
            ax.stairs(
                _densities(histogram, key),
                histogram["edges"],
                linestyle=style,
                color=color,
                label=f"{name} {key}",
            )
    ax.set(xlabel="Score", ylabel="Density", title="Score distribution per class")
    ax.legend(loc="upper center")


def _plot_importance(fig: Figure, importance: Mapping[str, float]) -> None:
    ax = fig.add_subplot()
    top = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:30][::-1]
    ax.barh([name for name, _ in top], [value for _, value in top])
    ax.set(xlabel="Gain", title=f"Feature importance (top {len(top)})")
    ax.tick_params(axis="y", labelsize=7)


def _plot_profit(fig: Figure, metrics: Mapping[str, Any]) -> None:
    ax = fig.add_subplot()
    money = metrics["business"]
    curve = money["curve"]
    ax.plot([c["depth"] for c in curve], [c["expected_profit"] for c in curve])
    ax.axhline(0.0, linestyle="--", color="grey", linewidth=1)
    ax.plot(
        [money["best_depth"]],
        [money["best_expected_profit"]],
        marker="o",
        color="tab:red",
        label=f"best: top {money['best_depth']:.1%}",
    )
    ax.set(xlabel="Share of users contacted", ylabel="Expected profit", title="Expected profit")
    ax.legend(loc="lower left")


# --- HTML -----------------------------------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_show(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(
    metrics: Mapping[str, Any],
    title: str,
    description: str,
    images: Sequence[tuple[str, bytes]],
    extra: Mapping[str, object],
) -> str:
    summary = [(key, metrics[key]) for key in _REQUIRED_METRICS]
    money = metrics.get("business")
    if money is not None:
        summary += [(key, value) for key, value in money.items() if key != "curve"]
    deciles = metrics.get("deciles", [])
    decile_keys = list(deciles[0]) if deciles else []
    calibration = metrics.get("calibration", [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
        "pre{background:#f7f7f7;padding:1em;overflow-x:auto}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(description)}</p>",
        f"<p>Test rows: {_show(metrics['n'])}; base rate: {_show(metrics['base_rate'])}</p>",
        "<h2>Metrics</h2>",
        _table(["metric", "value"], summary),
        "<h2>Calibration</h2>",
        _table(
            ["bin", "n", "mean score", "observed rate"],
            [[r["bin"], r["n"], r["mean_score"], r["observed_rate"]] for r in calibration],
        ),
        "<h2>Deciles</h2>",
        _table([k.replace("_", " ") for k in decile_keys], [list(r.values()) for r in deciles]),
        "<h2>Plots</h2>",
    ]
    for caption, png in images:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    for name, content in extra.items():
        text = (
            content
            if isinstance(content, str)
            else json.dumps(content, indent=2, sort_keys=True, default=str)
        )
        parts.append(f"<h2>{html.escape(name)}</h2><pre>{html.escape(text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
