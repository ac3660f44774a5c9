"""Realised performance: a past scoring date's scores against the labels that came true.

Once the label horizon of a scored ``as_of`` date has passed in the events
(``as_of + horizon <= complete_until``, the end of the source's complete data, see
:func:`~sparkml_prod.data.labels.labels_complete_until`), :func:`realised_performance`
joins that date's scores with the realised labels and records, per variant and model
version, ``n``, ``base_rate``, ``roc_auc``, ``log_loss``, ``calibration`` and
``top_decile_lift`` as :class:`~sparkml_prod.monitoring.records.MetricRecord` rows. The
metrics come from :func:`~sparkml_prod.modeling.evaluation.evaluate` (one Spark
aggregation into 10,000 score bins; log loss summed exactly) and
:func:`~sparkml_prod.modeling.evaluation.binned_scores` (the same bins, for the calibration
deciles and DeLong's variance): nothing but the bins reaches the driver.

A date whose labels are not complete yet gets the same metrics with status ``pending``,
no value, and ``detail`` ``{"evaluable_on": "YYYY-MM-DD", ...}``: the first UTC date on
whose midnight the label windows have ended, i.e. the day of ``as_of + horizon``
rounded up to midnight.

Champion vs challenger
----------------------
The variants are scored on disjoint users (a hash split), so their AUCs are independent
estimates. For each, DeLong's variance is computed from the score bins: with ``m``
positives and ``k`` negatives, a positive in bin ``b`` has the placement
``V10_b = (negatives below b + negatives_b / 2) / k`` and a negative the placement
``V01_b = (positives above b + positives_b / 2) / m`` (scores in one bin count as tied,
one half), and

    AUC = mean(V10) = mean(V01)
    S10 = sum_b positives_b * (V10_b - AUC)^2 / (m - 1)
    S01 = sum_b negatives_b * (V01_b - AUC)^2 / (k - 1)
    Var(AUC) = S10 / m + S01 / k.

Each ``roc_auc`` record's ``detail`` holds DeLong's variance (``delong``) and the interval
``AUC +- z * sqrt(Var)`` (``low``, ``high``, ``level``). The record ``auc_difference``
(variant ``challenger``) holds
``diff = AUC_challenger - AUC_champion`` and the interval
``diff +- z * sqrt(Var_challenger + Var_champion)`` with ``z`` the two-sided normal
quantile of ``level``; it is ``significant`` when the interval excludes 0. Shadow scores
(the same users as the champion) get no difference: their AUCs are not independent.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.tables import NUMERIC, require_columns
from sparkml_prod.core.time import (
    TIMESTAMP_TYPES,
    from_micros,
    micros,
    naive_utc,
    parse_window,
    timestamp_lit,
    to_micros,
)
from sparkml_prod.data.labels import add_labels
from sparkml_prod.modeling.evaluation import binned_scores, evaluate
from sparkml_prod.monitoring.records import MetricRecord
from sparkml_prod.registry.card import LabelRule

__all__ = [
    "REALISED_METRICS",
    "auc_difference",
    "delong_variance",
    "realised_labels",
    "realised_performance",
]

REALISED_METRICS = ("n", "base_rate", "roc_auc", "log_loss", "calibration", "top_decile_lift")
_MICROS_PER_DAY = 86_400_000_000
# The scores-table columns monitoring reads (name -> accepted types).
SCORE_COLUMNS = {
    "user_id": (),
    "as_of": TIMESTAMP_TYPES,
    "score": NUMERIC,
    "variant": "string",
    "model_version": NUMERIC,
}
_LABELS = {"user_id": (), "as_of": TIMESTAMP_TYPES, "label": NUMERIC}


def _on_date(df: DataFrame, as_of: dt.date) -> DataFrame:
    return df.where(micros("as_of") == F.lit(to_micros(as_of)))


def realised_labels(
    scores: DataFrame,
    rule: LabelRule,
    *,
    as_of: dt.date,
    source: str | None = None,
    source_version: int | None = None,
) -> DataFrame:
    """The realised labels of the users scored at ``as_of``, by the model's label rule.

    The spine is the distinct ``user_id`` of the scores of that date at midnight UTC;
    :func:`~sparkml_prod.data.labels.add_labels` labels it from the rule's source,
    filter, horizon and entity/timestamp columns (``source`` overrides the rule's
    table, as scoring's ``sources`` do).

    Returns
    -------
    DataFrame
        ``user_id, as_of (timestamp), label``.

    Examples
    --------
    >>> labels = realised_labels(scores, card.label, as_of=dt.date(2024, 6, 1))  # doctest: +SKIP
    """
    if rule.kind != "binary":
        raise ValueError(
            f"Realised performance needs a binary label rule; the rule's kind is "
            f"{rule.kind!r}. AUC, log loss and lift are defined for 0/1 labels only."
        )
    require_columns(scores, {"user_id": (), "as_of": TIMESTAMP_TYPES}, table="scores")
    spine = (
        _on_date(scores, as_of)
        .select("user_id")
        .where(F.col("user_id").isNotNull())
        .distinct()
        .withColumn("as_of", timestamp_lit(as_of))
    )
    return add_labels(
        spine,
        source or rule.source,
        horizon=rule.horizon,
        event_filter=rule.filter,
        entity_col="user_id",
        source_entity_col=rule.entity_col,
        timestamp_col=rule.timestamp_col,
        source_version=source_version,
    )


def delong_variance(bins: pd.DataFrame) -> tuple[float, float]:
    """AUC and DeLong's variance of it from score bins (module docs for the formula).

    ``bins`` has columns ``n`` and ``positives``, one row per score bin in ascending
    score order, as :func:`~sparkml_prod.modeling.evaluation.binned_scores` returns.

    Examples
    --------
    >>> bins = pd.DataFrame({"n": [2, 1, 1], "positives": [0, 1, 1]})
    >>> delong_variance(bins)
    (1.0, 0.0)
    """
    pos = bins["positives"].to_numpy(np.float64)
    neg = bins["n"].to_numpy(np.float64) - pos
    m, k = pos.sum(), neg.sum()
    v10 = (np.cumsum(neg) - neg / 2) / k
    v01 = (pos[::-1].cumsum()[::-1] - pos / 2) / m
    auc = float(np.sum(pos * v10) / m)
    s10 = float(np.sum(pos * (v10 - auc) ** 2) / (m - 1)) if m > 1 else 0.0
    s01 = float(np.sum(neg * (v01 - auc) ** 2) / (k - 1)) if k > 1 else 0.0
    return auc, s10 / m + s01 / k


def auc_difference(
    challenger: tuple[float, float], champion: tuple[float, float], level: float = 0.95
) -> dict[str, Any]:
    """Difference of two independent AUCs, each ``(auc, variance)``, with its interval.

    Examples
    --------
    >>> auc_difference((0.80, 0.0001), (0.75, 0.0001))["significant"]
    True
    """
    diff = challenger[0] - champion[0]
    half = two_sided_z(level) * math.sqrt(challenger[1] + champion[1])
    low, high = diff - half, diff + half
    return {
        "diff": diff,
        "low": low,
        "high": high,
        "significant": bool(low > 0.0 or high < 0.0),
        "level": level,
    }


def two_sided_z(level: float) -> float:
    """The two-sided normal quantile of a confidence level in (0, 1)."""
    if isinstance(level, bool) or not isinstance(level, float) or not 0.0 < level < 1.0:
        raise ValueError(
            f"The 'level' of a confidence interval must be a float in (0, 1), such as 0.95. "
            f"Got {level!r} instead."
        )
    return NormalDist().inv_cdf(0.5 + level / 2)


def _calibration(bins: pd.DataFrame) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error over score deciles (decile 1: top 10% by score).

    A bin straddling a decile boundary is split in proportion to its rows, its positives
    and score sum along with them, as the evaluation module splits its deciles.
    """
    desc = bins.iloc[::-1]
    counts = desc["n"].to_numpy(np.float64)
    pos, sums = desc["positives"].to_numpy(np.float64), desc["score_sum"].to_numpy(np.float64)
    n, end = counts.sum(), np.cumsum(counts)
    start = end - counts
    rows, error = [], 0.0
    for decile in range(1, 11):
        low, high = (decile - 1) * n / 10, decile * n / 10
        share = np.clip(np.minimum(end, high) - np.maximum(start, low), 0.0, None) / counts
        rows_in = float(np.sum(share * counts))
        mean_score = float(np.sum(share * sums)) / rows_in
        rate = float(np.sum(share * pos)) / rows_in
        error += rows_in / n * abs(mean_score - rate)
        rows.append({"decile": decile, "n": rows_in, "mean_score": mean_score, "rate": rate})
    return error, rows


def _evaluable_on(as_of: dt.date, horizon: str) -> dt.date:
    """The UTC date on whose midnight the label windows of ``as_of`` have all ended."""
    end = to_micros(as_of) + parse_window(horizon, owner="realised_performance", param="horizon")
    return from_micros(-(-end // _MICROS_PER_DAY) * _MICROS_PER_DAY).date()


def realised_performance(
    scores: DataFrame,
    labels: DataFrame,
    *,
    as_of: dt.date,
    horizon: str,
    complete_until: dt.datetime,
    model_name: str,
    level: float = 0.95,
) -> list[MetricRecord]:
    """Realised metrics of the scores of ``as_of``, per variant and model version.

    Parameters
    ----------
    scores : DataFrame
        The scores table (``user_id, as_of, score, variant, model_version``, more
        columns ignored); only rows of ``as_of`` are used.
    labels : DataFrame
        ``user_id, as_of (timestamp or date), label`` (0/1), e.g. from
        :func:`realised_labels`; only rows of ``as_of`` are used. Scored users without
        a label row are left out (the ``n`` record's detail counts them).
    as_of : date
        The scored date.
    horizon : str
        The label horizon, such as ``"30d"``.
    complete_until : datetime
        End of the label source's complete data (UTC rule).
    model_name : str
        The model the records are filed under.
    level : float
        Confidence level of the champion-vs-challenger interval.

    Returns
    -------
    list of MetricRecord
        :data:`REALISED_METRICS` per ``(variant, model_version)``, sorted; then
        ``auc_difference`` when there is exactly one champion and one challenger
        version. All ``ok`` (or all ``pending``); a variant whose labels hold one class
        only gets ``warn`` records without a value for the metrics that need both.

    Examples
    --------
    >>> records = realised_performance(scores, labels, as_of=dt.date(2024, 6, 1),  # doctest: +SKIP
    ...     horizon="30d", complete_until=dt.datetime(2024, 7, 2), model_name="churn")
    """
    require_columns(scores, SCORE_COLUMNS, table="scores")
    require_columns(labels, _LABELS, table="labels")
    window = parse_window(horizon, owner="realised_performance", param="horizon")
    needed = to_micros(as_of) + window
    pending = needed > to_micros(naive_utc(complete_until))
    day = _on_date(scores, as_of).select(
        "user_id", "score", "variant", F.col("model_version").cast("long").alias("model_version")
    )

    two_sided_z(level)  # a bad level fails before any Spark job

    def record(
        variant: str,
        version: int,
        metric: str,
        value: float | None,
        status: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> MetricRecord:
        text = json.dumps(detail, sort_keys=True) if detail is not None else None
        return MetricRecord(
            as_of, model_name, version, variant, metric, None, value, None, None, status, text
        )

    if pending:
        groups = day.groupBy("variant", "model_version").count().collect()
        waiting = {
            "evaluable_on": _evaluable_on(as_of, horizon).isoformat(),
            "labels_needed_until": from_micros(needed).isoformat(sep=" "),
            "complete_until": naive_utc(complete_until).isoformat(sep=" "),
        }
        return [
            record(g["variant"], int(g["model_version"]), metric, None, "pending", waiting)
            for g in sorted(groups, key=lambda g: (g["variant"], g["model_version"]))
            for metric in REALISED_METRICS
        ]

    truth = _on_date(labels, as_of).select("user_id", F.col("label").cast("double").alias("label"))
    joined = day.join(truth, "user_id", "left").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = (
            joined.groupBy("variant", "model_version")
            .agg(F.count(F.lit(1)).alias("scored"), F.count("label").alias("labelled"))
            .collect()
        )
        records: list[MetricRecord] = []
        aucs: dict[str, list[tuple[int, tuple[float, float]]]] = {}
        for g in sorted(counts, key=lambda g: (g["variant"], g["model_version"])):
            variant, version = g["variant"], int(g["model_version"])
            rows = joined.where(
                (F.col("variant") == variant)
                & (F.col("model_version") == version)
                & F.col("label").isNotNull()
            )
            coverage = {"scored": int(g["scored"]), "labelled": int(g["labelled"])}
            bins = binned_scores(rows)
            n, positives = int(bins["n"].sum()), int(bins["positives"].sum())
            records.append(record(variant, version, "n", float(n), detail=coverage))
            if positives in (0, n):
                reason = {"reason": f"{n} labelled user(s), {positives} positive: one class only"}
                rate = positives / n if n else None
                records.append(record(variant, version, "base_rate", rate, "ok" if n else "warn"))
                records += [
                    record(variant, version, metric, None, "warn", reason)
                    for metric in REALISED_METRICS[2:]
                ]
                continue
            records.append(record(variant, version, "base_rate", positives / n))
            metrics = evaluate(rows)
            auc_var = delong_variance(bins)
            aucs.setdefault(variant, []).append((version, (metrics["roc_auc"], auc_var[1])))
            error, deciles = _calibration(bins)
            half = two_sided_z(level) * math.sqrt(auc_var[1])
            interval = {
                "delong": auc_var[1],
                "low": metrics["roc_auc"] - half,
                "high": metrics["roc_auc"] + half,
                "level": level,
            }
            records += [
                record(variant, version, "roc_auc", metrics["roc_auc"], detail=interval),
                record(variant, version, "log_loss", metrics["log_loss"]),
                record(variant, version, "calibration", error, detail={"deciles": deciles}),
                record(variant, version, "top_decile_lift", metrics["deciles"][0]["lift"]),
            ]
    finally:
        joined.unpersist()
    champion, challenger = aucs.get("champion", []), aucs.get("challenger", [])
    if len(champion) == 1 and len(challenger) == 1:
        result = auc_difference(challenger[0][1], champion[0][1], level)
        interval = {k: result[k] for k in ("low", "high", "significant", "level")}
        interval["champion_version"] = champion[0][0]
        records.append(
            record(
                "challenger", challenger[0][0], "auc_difference", result["diff"], detail=interval
            )
        )
    return records
