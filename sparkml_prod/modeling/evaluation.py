"""Metrics of a binary classifier on a test snapshot, and a self-contained HTML report.

Everything is computed in Spark from *binned* scores: one aggregation groups the rows
by score bin (``floor(score * bins)``, 10,000 bins by default) and returns per bin the
row count, the positives and the score sum, minimum and maximum. Only that small frame
(at most ``bins`` rows, plus a few where a coarse calibration or histogram bin boundary
falls inside a fine bin) reaches the driver; ROC and PR curves, AUCs, calibration,
deciles, the score histogram and the business curve all come from it. Log loss and the
Brier score are summed exactly, row by row, in the same aggregation.

Binning costs little accuracy: two scores in the same bin (width 1e-4 by default) count
as tied, so a positive and a negative there count half a correctly ordered pair, as
scikit-learn counts exact ties.

Deciles are by population share: decile 1 is the top 10% of users by score. A bin that
straddles a decile boundary is split between the two deciles in proportion to its
rows, its positives along with them, so each decile holds exactly ``n / 10`` users
(hence float ``n`` and ``positives`` in the decile rows).

:func:`sparkml_prod.modeling.report.write_report` turns the metrics into ``metrics.json``,
PNG plots and a ``report.html`` that embeds the plots, so the page renders when copied alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.errors import TrainingDataError
from sparkml_prod.core.tables import NUMERIC, require_columns

if TYPE_CHECKING:
    pass

__all__ = [
    "BusinessValue",
    "binned_scores",
    "evaluate",
    "score_histogram",
    "HISTOGRAM_BINS",
    "MAX_BINS",
    "REQUIRED_METRICS",
]

# Equal-width score bins of the per-class histogram of `evaluate`.
HISTOGRAM_BINS = 50
# Largest number of score bins: the binned frame is collected to the driver.
MAX_BINS = 100_000
# Scores are clipped to [EPS, 1 - EPS] for the log loss.
_EPS = 1e-15
# Curves kept in the metrics are thinned to about this many points.
_CURVE_POINTS = 200
REQUIRED_METRICS = ("n", "positives", "base_rate", "roc_auc", "pr_auc", "log_loss", "brier")


@dataclass(frozen=True)
class BusinessValue:
    """Value of acting on a true positive, cost of acting on anyone (both per user).

    Contacting the top ``k`` users by score is expected to earn
    ``value_per_true_positive * positives_in_top_k - cost_per_action * k``.

    Examples
    --------
    >>> BusinessValue(value_per_true_positive=20.0, cost_per_action=1.5).cost_per_action
    1.5
    """

    value_per_true_positive: float
    cost_per_action: float

    def __post_init__(self) -> None:
        for name in ("value_per_true_positive", "cost_per_action"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"The '{name}' parameter of BusinessValue must be a finite number. "
                    f"Got {value!r} instead."
                )
            if not math.isfinite(value):
                raise ValueError(
                    f"The '{name}' parameter of BusinessValue must be a finite number. "
                    f"Got {value!r} instead."
                )


def binned_scores(
    predictions: DataFrame,
    label_col: str = "label",
    score_col: str = "score",
    bins: int = 10_000,
) -> pd.DataFrame:
    """Per-bin counts of the scores, from one Spark aggregation.

    A row's bin is ``floor(score * bins)`` clipped to ``[0, bins - 1]`` (a score of
    exactly 1.0 falls in the last bin).

    Parameters
    ----------
    predictions : DataFrame
        One row per user with a numeric 0/1 label and a probability score.
    label_col, score_col : str
        The label and score columns.
    bins : int
        Number of equal-width score bins over [0, 1], at most :data:`MAX_BINS`.

    Returns
    -------
    pandas.DataFrame
        Columns ``bin, n, positives, score_sum, score_min, score_max``, one row per
        non-empty bin, sorted by bin.

    Raises
    ------
    SchemaError
        When a column is missing or not numeric (before any Spark job).
    TrainingDataError
        When a score is null, NaN or outside [0, 1], or a label is not 0 or 1.

    Examples
    --------
    >>> df = spark.createDataFrame([(1.0, 0.91), (0.0, 0.12), (0.0, 0.15)], ["label", "score"])
    >>> binned_scores(df, bins=10)[["bin", "n", "positives"]].values.tolist()
    [[1, 2, 0], [9, 1, 1]]
    """
    _check_int("bins", bins, "binned_scores", MAX_BINS)
    _require(predictions, label_col, score_col)
    parts = _aggregate(predictions, label_col, score_col, {"bin": bins}, losses=False)
    _check_values(parts, label_col, score_col)
    return _collapse(parts, "bin")


def score_histogram(
    predictions: DataFrame,
    label_col: str = "label",
    score_col: str = "score",
    bins: int = HISTOGRAM_BINS,
) -> dict[str, list[Any]]:
    """Counts of positives and negatives in equal-width score bins, from one aggregation.

    Used to compare the train and test score distributions (see
    :func:`sparkml_prod.modeling.report.write_report`).

    Returns
    -------
    dict
        ``{"edges": [bins + 1 floats], "positives": [bins ints], "negatives": [bins ints]}``;
        bin ``i`` is ``[edges[i], edges[i + 1])``, the last one closed.

    Raises
    ------
    SchemaError, TrainingDataError
        As :func:`binned_scores`.

    Examples
    --------
    >>> df = spark.createDataFrame([(1.0, 0.9), (0.0, 0.1), (0.0, 0.2)], ["label", "score"])
    >>> score_histogram(df, bins=2)
    {'edges': [0.0, 0.5, 1.0], 'positives': [0, 1], 'negatives': [2, 0]}
    """
    _check_int("bins", bins, "score_histogram", MAX_BINS)
    _require(predictions, label_col, score_col)
    parts = _aggregate(predictions, label_col, score_col, {"bin": bins}, losses=False)
    _check_values(parts, label_col, score_col)
    return _histogram(_collapse(parts, "bin"), bins)


def evaluate(
    predictions: DataFrame,
    label_col: str = "label",
    score_col: str = "score",
    *,
    bins: int = 10_000,
    calibration_bins: int = 10,
    business: BusinessValue | None = None,
) -> dict[str, Any]:
    """Metrics of a binary classifier's scores, computed in one Spark aggregation.

    Parameters
    ----------
    predictions : DataFrame
        One row per user with a numeric 0/1 label and the probability of class 1.
    label_col, score_col : str
        The label and score columns.
    bins : int
        Score bins of the ROC and PR curves, deciles and business curve.
    calibration_bins : int
        Equal-width score bins of the calibration table.
    business : BusinessValue, optional
        When given, adds the expected profit of contacting the top users.

    Returns
    -------
    dict
        JSON-safe: ``n, positives, base_rate, roc_auc, pr_auc, log_loss, brier`` (floats
        and ints), ``roc {fpr, tpr}`` and ``pr {recall, precision}`` (at most about 200
        points, thresholds from high to low, end points kept), ``calibration`` (rows
        ``{bin, n, mean_score, observed_rate}``, non-empty bins only), ``deciles`` (10
        rows ``{decile, n, positives, rate, lift, cumulative_positives, cumulative_gain,
        cumulative_lift}``), ``histogram {edges, positives, negatives}`` (50 bins) and,
        with ``business``, ``business {value_per_true_positive, cost_per_action, curve,
        best_depth, best_threshold, best_expected_profit, profit_contact_everyone}``.
        The business curve starts at depth 0 (nobody contacted, threshold ``None``);
        each later point contacts everyone scoring ``>= threshold``.

    Raises
    ------
    SchemaError
        When a column is missing or not numeric (before any Spark job).
    TrainingDataError
        When there are no rows, only one label class, a null, NaN or out-of-range
        score, or a label other than 0 and 1.

    Examples
    --------
    >>> df = spark.createDataFrame(
    ...     [(1.0, 0.9), (0.0, 0.2), (1.0, 0.6), (0.0, 0.7)], ["label", "score"]
    ... )
    >>> evaluate(df, bins=100)["roc_auc"]
    0.75
    """
    _check_int("bins", bins, "evaluate", MAX_BINS)
    _check_int("calibration_bins", calibration_bins, "evaluate", MAX_BINS)
    _require(predictions, label_col, score_col)
    keys = {"bin": bins, "calibration_bin": calibration_bins, "histogram_bin": HISTOGRAM_BINS}
    parts = _aggregate(predictions, label_col, score_col, keys, losses=True)
    _check_values(parts, label_col, score_col)
    n, positives = int(parts["n"].sum()), int(parts["positives"].sum())
    if n == 0:
        raise TrainingDataError(
            "The predictions to evaluate have no rows. Check the test snapshot's as-of date "
            "and filters: it should hold the users scored at that date."
        )
    if positives in (0, n):
        only = "1.0 (positives)" if positives else "0.0 (negatives)"
        raise TrainingDataError(
            f"Column '{label_col}' of the predictions holds only class {only} in all {n} "
            "rows; ROC AUC, PR AUC and lift need both classes. Evaluate on a test "
            "snapshot with positives and negatives (a longer label horizon or more users)."
        )

    binned = _collapse(parts, "bin")
    desc = binned.iloc[::-1]
    counts = desc["n"].to_numpy(np.int64)
    pos = desc["positives"].to_numpy(np.int64)
    tp = np.concatenate([[0], np.cumsum(pos)])
    fp = np.concatenate([[0], np.cumsum(counts - pos)])
    tpr, fpr = tp / positives, fp / (n - positives)
    recall, precision = tpr[1:], tp[1:] / (tp[1:] + fp[1:])
    roc_keep, pr_keep = _thin(len(tpr)), _thin(len(recall))

    metrics: dict[str, Any] = {
        "n": n,
        "positives": positives,
        "base_rate": positives / n,
        "roc_auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
        "pr_auc": float(np.sum(np.diff(tpr) * precision)),
        "log_loss": math.fsum(parts["log_loss_sum"]) / n,
        "brier": math.fsum(parts["brier_sum"]) / n,
        "roc": {"fpr": fpr[roc_keep].tolist(), "tpr": tpr[roc_keep].tolist()},
        "pr": {"recall": recall[pr_keep].tolist(), "precision": precision[pr_keep].tolist()},
        "calibration": [
            {
                "bin": int(row.bin),
                "n": int(row.n),
                "mean_score": float(row.score_sum / row.n),
                "observed_rate": float(row.positives / row.n),
            }
            for row in _collapse(parts, "calibration_bin").itertuples()
        ],
        "deciles": _deciles(counts, pos),
        "histogram": _histogram(_collapse(parts, "histogram_bin"), HISTOGRAM_BINS),
    }
    if business is not None:
        thresholds = desc["score_min"].to_numpy(np.float64)
        metrics["business"] = _business(business, counts, pos, thresholds)
    return metrics


# --- aggregation --------------------------------------------------------------------


def _check_int(name: str, value: object, owner: str, largest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise ValueError(
            f"The '{name}' parameter of {owner} must be an int in [1, {largest:,}] "
            f"(the binned frame is collected to the driver). Got {value!r} instead."
        )


def _require(predictions: DataFrame, label_col: str, score_col: str) -> None:
    require_columns(predictions, {label_col: NUMERIC, score_col: NUMERIC}, table="predictions")


def _column(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")


def _bin(score: Column, bins: int) -> Column:
    """``floor(score * bins)`` clipped to [0, bins - 1]; null for a null or NaN score."""
    clipped = F.least(F.greatest(score, F.lit(0.0)), F.lit(1.0))
    index = F.least(F.floor(clipped * F.lit(float(bins))), F.lit(bins - 1)).cast("int")
    return F.when(score.isNull() | F.isnan(score), F.lit(None).cast("int")).otherwise(index)


def _aggregate(
    predictions: DataFrame, label_col: str, score_col: str, keys: dict[str, int], losses: bool
) -> pd.DataFrame:
    """One Spark aggregation grouped by the bin of each of ``keys``; small result."""
    frame = predictions.select(
        _column(label_col).cast("double").alias("label"),
        _column(score_col).cast("double").alias("score"),
    )
    label, score = F.col("label"), F.col("score")
    aggregates = [
        F.count(F.lit(1)).alias("n"),
        F.sum(F.when(label == 1.0, 1).otherwise(0)).alias("positives"),
        F.sum(F.when(label.isin(0.0, 1.0), 0).otherwise(1)).alias("invalid_labels"),
        F.sum(score).alias("score_sum"),
        F.min(score).alias("score_min"),
        F.max(score).alias("score_max"),
    ]
    if losses:
        p = F.least(F.greatest(score, F.lit(_EPS)), F.lit(1.0 - _EPS))
        aggregates += [
            F.sum(F.when(label == 1.0, -F.log(p)).otherwise(-F.log(1.0 - p))).alias("log_loss_sum"),
            F.sum((score - label) * (score - label)).alias("brier_sum"),
        ]
    grouped = frame.groupBy(*[_bin(score, size).alias(key) for key, size in keys.items()])
    result = grouped.agg(*aggregates)
    return pd.DataFrame([tuple(row) for row in result.collect()], columns=result.columns)


def _check_values(parts: pd.DataFrame, label_col: str, score_col: str) -> None:
    n = int(parts["n"].sum())
    unbinned = parts[parts["bin"].isna()]
    if len(unbinned):
        raise TrainingDataError(
            f"Column '{score_col}' of the predictions has {int(unbinned['n'].sum())} null or "
            f"NaN score(s) among {n} rows; every row needs a probability in [0, 1]. Drop "
            "those rows or score them before evaluating."
        )
    invalid = int(parts["invalid_labels"].sum())
    if invalid:
        raise TrainingDataError(
            f"Column '{label_col}' of the predictions has {invalid} value(s) other than 0.0 "
            f"and 1.0 (nulls included) among {n} rows; expected a binary label. Drop rows "
            "whose label is unknown, or binarise the label first."
        )
    low, high = (
        (float(parts["score_min"].min()), float(parts["score_max"].max())) if n else (0.0, 1.0)
    )
    if low < 0.0 or high > 1.0:
        raise TrainingDataError(
            f"Column '{score_col}' of the predictions has scores from {low!r} to {high!r}; "
            "expected probabilities in [0, 1]. Pass the probability of class 1 (for example "
            "vector_to_array('probability')[1]), not a raw margin."
        )


def _collapse(parts: pd.DataFrame, key: str) -> pd.DataFrame:
    """Sum the parts over one bin key: ``bin, n, positives, score_sum, score_min, score_max``."""
    binned = parts.groupby(key, sort=True).agg(
        n=("n", "sum"),
        positives=("positives", "sum"),
        score_sum=("score_sum", "sum"),
        score_min=("score_min", "min"),
        score_max=("score_max", "max"),
    )
    binned = binned.reset_index().rename(columns={key: "bin"})
    types = {"bin": "int64", "n": "int64", "positives": "int64"}
    return binned.astype({**types, **dict.fromkeys(binned.columns[3:], "float64")})


# --- metrics from bins ----------------------------------------------------------------


def _thin(length: int, keep: Sequence[int] = ()) -> list[int]:
    """Indices of about ``_CURVE_POINTS`` evenly spaced points, end points and ``keep``."""
    if length <= _CURVE_POINTS:
        return list(range(length))
    spaced = np.linspace(0, length - 1, _CURVE_POINTS).round().astype(int).tolist()
    return sorted({*spaced, *keep})


def _histogram(binned: pd.DataFrame, bins: int) -> dict[str, list[Any]]:
    positives, negatives = [0] * bins, [0] * bins
    for row in binned.itertuples():
        positives[row.bin] = int(row.positives)
        negatives[row.bin] = int(row.n - row.positives)
    return {
        "edges": [i / bins for i in range(bins + 1)],
        "positives": positives,
        "negatives": negatives,
    }


def _deciles(counts: np.ndarray, pos: np.ndarray) -> list[dict[str, Any]]:
    """Deciles of users by descending score; straddling bins split in proportion."""
    n, positives = int(counts.sum()), int(pos.sum())
    base_rate = positives / n
    end = np.cumsum(counts).astype(np.float64)
    start = end - counts
    rows, cumulative_n, cumulative_positives = [], 0.0, 0.0
    for decile in range(1, 11):
        low, high = (decile - 1) * n / 10, decile * n / 10
        share = np.clip(np.minimum(end, high) - np.maximum(start, low), 0.0, None) / counts
        rows_in, positives_in = float(np.sum(share * counts)), float(np.sum(share * pos))
        cumulative_n += rows_in
        cumulative_positives += positives_in
        rate = positives_in / rows_in
        rows.append(
            {
                "decile": decile,
                "n": rows_in,
                "positives": positives_in,
                "rate": rate,
                "lift": rate / base_rate,
                "cumulative_positives": cumulative_positives,
                "cumulative_gain": cumulative_positives / positives,
                "cumulative_lift": cumulative_positives / cumulative_n / base_rate,
            }
        )
    return rows


def _business(
    business: BusinessValue, counts: np.ndarray, pos: np.ndarray, thresholds: np.ndarray
) -> dict[str, Any]:
    """Expected profit of contacting everyone down to each bin, from the top score."""
    value, cost = float(business.value_per_true_positive), float(business.cost_per_action)
    contacted = np.concatenate([[0], np.cumsum(counts)])
    profit = value * np.concatenate([[0], np.cumsum(pos)]) - cost * contacted
    depth = contacted / contacted[-1]
    best = int(np.argmax(profit))
    threshold: list[float | None] = [None, *thresholds.tolist()]
    curve = [
        {
            "depth": float(depth[i]),
            "threshold": threshold[i],
            "contacted": int(contacted[i]),
            "expected_profit": float(profit[i]),
        }
        for i in _thin(len(profit), keep=(best,))
    ]
    return {
        "value_per_true_positive": value,
        "cost_per_action": cost,
        "curve": curve,
        "best_depth": float(depth[best]),
        "best_threshold": threshold[best],
        "best_expected_profit": float(profit[best]),
        "profit_contact_everyone": float(profit[-1]),
    }
