"""The action's impact: outcomes of acted-upon users against a hashed holdout.

Scoring can flag a share of users as ``holdout`` with :func:`assign_holdout`; the action
is not taken for them. The flag is a salted hash of the user id, like the variant split
of :func:`~sparkml_prod.runs.score.assign_variant`, but in its own salt namespace
(``xxhash64("holdout:" + salt, id)``), so it is independent of the variant: each
variant's holdout is the same share of its users, and a user's variant says nothing
about their holdout flag even when both use the same salt.

:func:`action_impact` then compares, among the *targeted* users (the top
``target_share`` by score, or everyone), the outcome rate of acted-upon users (``p1`` of
``n1``) with that of holdout users (``p0`` of ``n0``), per variant and model version,
overall (metric ``uplift``, feature None) and per score decile (metric ``uplift``,
feature ``decile_<k>``, decile 1 the top 10% of scored users). The uplift is
``p1 - p0``, with the normal-approximation (Wald, unpooled) interval for a difference of
two independent proportions:

    (p1 - p0) +- z * sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)

``z`` the two-sided normal quantile of ``level``. It needs a few outcomes of each kind
in both groups to be accurate (a common rule: ``n * p`` and ``n * (1 - p)`` at least 5).

Deciles and the target cut are score quantiles of all users scored at ``as_of`` (per
variant and version), from Spark's ``percentile_approx`` (relative rank error 1e-4): a
user is in the top ``s`` when their score is above the ``1 - s`` quantile, so users with
tied scores are never split between two deciles.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.errors import ConfigError, TrainingDataError
from sparkml_prod.core.tables import NUMERIC, require_columns
from sparkml_prod.core.time import micros, to_micros
from sparkml_prod.monitoring.realised import SCORE_COLUMNS, two_sided_z
from sparkml_prod.monitoring.records import MetricRecord

__all__ = [
    "HOLDOUT_BUCKETS",
    "HOLDOUT_NAMESPACE",
    "action_impact",
    "assign_holdout",
    "holdout_bucket",
    "uplift_interval",
]

HOLDOUT_BUCKETS = 10_000
HOLDOUT_NAMESPACE = "holdout:"
_ACCURACY = 10_000
_SCORES = {**SCORE_COLUMNS, "holdout": "boolean"}


def _check_share(name: str, share: object, low_open: bool) -> float:
    if isinstance(share, (int, float)) and not isinstance(share, bool) and math.isfinite(share):
        if (0.0 < share <= 1.0) if low_open else (0.0 <= share <= 1.0):
            return float(share)
    bounds = "(0, 1]" if low_open else "[0, 1]"
    raise ConfigError(
        f"The '{name}' must be a number in {bounds} (a share of users, such as 0.05). "
        f"Got {share!r} instead."
    )


def holdout_bucket(entity: Column, salt: str) -> Column:
    """The user's holdout bucket in ``[0, HOLDOUT_BUCKETS)``: ``xxhash64("holdout:" + salt,
    id as a string)``, independent of the variant bucket of the same salt."""
    return F.pmod(
        F.xxhash64(F.lit(HOLDOUT_NAMESPACE + salt), entity.cast("string")),
        F.lit(HOLDOUT_BUCKETS),
    )


def assign_holdout(entity: Column, salt: str, share: float) -> Column:
    """True for a ``share`` of users (by holdout bucket): the action is not taken for them.

    Stable across runs, partitionings and machines; raising the share only adds users
    (buckets below ``round(share * 10000)`` are held out).

    Raises
    ------
    ConfigError
        When ``share`` is not a number in [0, 1].

    Examples
    --------
    >>> users = spark.range(1000).withColumnRenamed("id", "user_id")  # doctest: +SKIP
    >>> users.select(assign_holdout(F.col("user_id"), "2024-q2", 0.05).alias("holdout"))
    ... # doctest: +SKIP
    DataFrame[holdout: boolean]
    """
    cut = int(round(_check_share("holdout share", share, low_open=False) * HOLDOUT_BUCKETS))
    return holdout_bucket(entity, salt) < F.lit(cut)


def uplift_interval(
    treated_outcomes: int,
    treated_n: int,
    holdout_outcomes: int,
    holdout_n: int,
    level: float = 0.95,
) -> dict[str, Any]:
    """Both rates, their difference ``p1 - p0`` and its Wald interval (module docs).

    Examples
    --------
    >>> r = uplift_interval(30, 100, 10, 100)
    >>> round(r["uplift"], 2), r["significant"]
    (0.2, True)
    """
    p1, p0 = treated_outcomes / treated_n, holdout_outcomes / holdout_n
    diff = p1 - p0
    half = two_sided_z(level) * math.sqrt(p1 * (1 - p1) / treated_n + p0 * (1 - p0) / holdout_n)
    return {
        "uplift": diff,
        "treated_rate": p1,
        "holdout_rate": p0,
        "treated_n": treated_n,
        "holdout_n": holdout_n,
        "treated_outcomes": treated_outcomes,
        "holdout_outcomes": holdout_outcomes,
        "low": diff - half,
        "high": diff + half,
        "significant": bool(diff - half > 0.0 or diff + half < 0.0),
        "level": level,
    }


def action_impact(
    scores: DataFrame,
    outcomes: DataFrame,
    *,
    as_of: dt.date,
    model_name: str,
    target_share: float | None = None,
    level: float = 0.95,
) -> list[MetricRecord]:
    """Uplift of the action among targeted users, overall and per score decile.

    Parameters
    ----------
    scores : DataFrame
        The scores table with the ``holdout`` flag (``user_id, as_of, score, variant,
        model_version, holdout``); only rows of ``as_of`` are used.
    outcomes : DataFrame
        ``user_id, outcome`` (0/1) of the users scored at ``as_of``. Scored users
        without an outcome row are left out.
    as_of : date
        The scored date.
    model_name : str
        The model the records are filed under.
    target_share : float, optional
        The share of users (top by score) the action targets; None: everyone.
    level : float
        Confidence level of the intervals.

    Returns
    -------
    list of MetricRecord
        Per ``(variant, model_version)``: ``uplift`` overall, then per decile holding
        targeted users. ``detail`` holds both rates, counts, outcomes and the interval.
        A group without acted-upon or without holdout users gets value None, ``warn``.

    Raises
    ------
    SchemaError
        When a column is missing or mistyped (before any Spark job).
    TrainingDataError
        When an outcome is not 0 or 1.

    Examples
    --------
    >>> action_impact(scores, outcomes, as_of=dt.date(2024, 6, 1),  # doctest: +SKIP
    ...               model_name="churn", target_share=0.2)
    """
    require_columns(scores, _SCORES, table="scores")
    require_columns(outcomes, {"user_id": (), "outcome": NUMERIC}, table="outcomes")
    share = None if target_share is None else _check_share("target_share", target_share, True)
    two_sided_z(level)
    keys = ["variant", "model_version"]
    day = scores.where(micros("as_of") == F.lit(to_micros(as_of))).select(
        "user_id", "score", "variant", F.col("model_version").cast("long"), "holdout"
    )
    cuts = [F.percentile_approx("score", [k / 10 for k in range(1, 10)], _ACCURACY).alias("e")]
    if share is not None and share < 1.0:
        cuts.append(F.percentile_approx("score", 1.0 - share, _ACCURACY).alias("cut"))
    else:
        cuts.append(F.lit(None).cast("double").alias("cut"))
    edges = day.groupBy(*keys).agg(*cuts)
    score = F.col("score")
    higher = F.aggregate("e", F.lit(0), lambda acc, e: acc + F.when(score > e, 1).otherwise(0))
    ranked = (
        day.join(F.broadcast(edges), keys)
        .where(F.col("cut").isNull() | (score > F.col("cut")))
        .withColumn("decile", F.lit(10) - higher)
        .join(outcomes.select("user_id", F.col("outcome").cast("double").alias("y")), "user_id")
    )
    y = F.col("y")
    counted = (
        ranked.groupBy(*keys, "decile", "holdout")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(F.when(y == 1.0, 1).otherwise(0)).alias("outcomes"),
            F.sum(F.when(y.isin(0.0, 1.0), 0).otherwise(1)).alias("invalid"),
        )
        .collect()
    )
    invalid = sum(int(r["invalid"]) for r in counted)
    if invalid:
        raise TrainingDataError(
            f"Column 'outcome' of the outcomes has {invalid} value(s) other than 0 and 1 "
            "(nulls included) among the scored users; expected a binary outcome. Drop "
            "rows whose outcome is unknown, or binarise the outcome first."
        )
    # (variant, version) -> decile -> holdout -> [n, outcomes]
    table: dict[tuple[str, int], dict[int, dict[bool, list[int]]]] = {}
    for r in counted:
        cell = table.setdefault((r["variant"], int(r["model_version"])), {})
        cell.setdefault(int(r["decile"]), {}).setdefault(bool(r["holdout"]), [0, 0])
        cell[int(r["decile"])][bool(r["holdout"])] = [int(r["n"]), int(r["outcomes"])]

    records = []
    for (variant, version), deciles in sorted(table.items()):
        parts = [(None, deciles)] + [(f"decile_{k}", {k: deciles[k]}) for k in sorted(deciles)]
        for feature, cells in parts:
            total = {
                flag: [sum(c.get(flag, [0, 0])[i] for c in cells.values()) for i in (0, 1)]
                for flag in (False, True)
            }
            (n1, o1), (n0, o0) = total[False], total[True]
            if n1 and n0:
                detail = uplift_interval(o1, n1, o0, n0, level)
                value, status = detail.pop("uplift"), "ok"
            else:
                value, status = None, "warn"
                detail = {"reason": f"{n1} acted-upon and {n0} holdout user(s): no comparison"}
            records.append(
                MetricRecord(
                    as_of,
                    model_name,
                    version,
                    variant,
                    "uplift",
                    feature,
                    value,
                    None,
                    None,
                    status,
                    json.dumps(detail, sort_keys=True),
                )  # fmt: skip
            )
    return records
