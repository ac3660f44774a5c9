"""Reference profiles and drift: exact bins and shares, hand-computed PSI, one Spark job."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from spark_jobs import no_job_runs

from sparkml_prod.core.errors import ModelCardError, SchemaError
from sparkml_prod.monitoring.drift import DriftThresholds, measure_drift
from sparkml_prod.monitoring.profile import (
    ColumnProfile,
    ReferenceProfile,
    profile_columns,
    reference_profile,
)
from sparkml_prod.monitoring.records import MetricRecord

AS_OF = dt.date(2024, 3, 1)
RUN = {"as_of": AS_OF, "model_name": "churn", "model_version": 3, "variant": "champion"}
NAN = float("nan")

# Written by hand: x bins (-inf, 1], (1, 2], (2, inf); plan categories a, b, pooled c.
HAND_PROFILE: dict[str, Any] = {
    "version": 1,
    "row_count": 10,
    "features": [
        {
            "name": "x",
            "kind": "numeric",
            "row_count": 10,
            "edges": [1.0, 2.0],
            "shares": [0.4, 0.4, 0.2],
            "missing_rate": 0.0,
        },
        {
            "name": "plan",
            "kind": "categorical",
            "row_count": 10,
            "categories": ["a", "b"],
            "other_categories": ["c"],
            "shares": [0.5, 0.3, 0.2, 0.0],
            "missing_rate": 0.0,
        },
    ],
    "score": {
        "name": "score",
        "kind": "numeric",
        "row_count": 10,
        "edges": [0.5],
        "shares": [0.5, 0.5],
        "missing_rate": 0.0,
    },
}


def record(metric: str, feature: str | None, value: float, status: str, **kw: Any) -> MetricRecord:
    levels = {
        "psi": (0.1, 0.25),
        "missing_rate_change": (0.05, 0.2),
        "row_count": (None, None),
    }[metric]
    return MetricRecord(
        **RUN,
        metric=metric,
        feature=feature,
        value=value,
        warn=levels[0],
        alert=levels[1],
        status=status,
        **kw,
    )


def test_psi_equals_the_hand_computed_value(spark: SparkSession) -> None:
    profile = ReferenceProfile.from_dict(HAND_PROFILE)
    # x: 1.0 and 2.0 sit on edges (bins are closed on the right); nothing above 2; a null
    # and a NaN are missing. plan: c is pooled into __other__, z never seen in training.
    rows = [
        (0.5, "a", 0.2),
        (0.5, "a", 0.2),
        (0.5, "a", 0.2),
        (0.5, "a", 0.2),
        (1.0, "b", 0.5),
        (1.5, "b", 0.9),
        (1.5, "b", 0.9),
        (2.0, "c", 0.9),
        (None, "z", 0.9),
        (NAN, None, 0.9),
    ]
    scored = spark.createDataFrame(rows, "x double, plan string, score double")

    result = measure_drift(scored, profile, **RUN)

    eps = 1e-4
    # x actual [0.5, 0.3, 0 -> eps, missing 0.2] against [0.4, 0.4, 0.2, missing 0 -> eps]
    psi_x = math.fsum(
        [
            (0.5 - 0.4) * math.log(0.5 / 0.4),
            (0.3 - 0.4) * math.log(0.3 / 0.4),
            (eps - 0.2) * math.log(eps / 0.2),
            (0.2 - eps) * math.log(0.2 / eps),
        ]
    )
    # plan actual [a 0.4, b 0.3, other 0.1, unseen 0.1, missing 0.1]
    # against    [a 0.5, b 0.3, other 0.2, unseen 0 -> eps, missing 0 -> eps]
    psi_plan = math.fsum(
        [
            (0.4 - 0.5) * math.log(0.4 / 0.5),
            (0.3 - 0.3) * math.log(0.3 / 0.3),
            (0.1 - 0.2) * math.log(0.1 / 0.2),
            (0.1 - eps) * math.log(0.1 / eps),
            (0.1 - eps) * math.log(0.1 / eps),
        ]
    )
    assert result.records == [
        record("row_count", None, 10.0, "ok", detail='{"reference": 10}'),
        record("psi", "x", psi_x, "alert"),
        record(
            "missing_rate_change", "x", 0.2, "alert", detail='{"actual": 0.2, "reference": 0.0}'
        ),
        record("psi", "plan", psi_plan, "alert"),
        record(
            "missing_rate_change", "plan", 0.1, "warn", detail='{"actual": 0.1, "reference": 0.0}'
        ),
        record("psi", "score", 0.0, "ok"),
        record(
            "missing_rate_change", "score", 0.0, "ok", detail='{"actual": 0.0, "reference": 0.0}'
        ),
    ]
    assert result.row_count == 10
    assert result.shares == {"x": (0.5, 0.3, 0.0, 0.2), "plan": (0.4, 0.3, 0.1, 0.1, 0.1)}
    assert result.score_shares == (0.5, 0.5, 0.0)
    assert profile.score is not None
    assert profile.score.labels == ("(-inf, 0.5]", "(0.5, inf)", "__missing__")


def profile_frame(spark: SparkSession) -> DataFrame:
    """20 rows: ties is 0 for 60%; x is 1..16 with 2 nulls and 2 NaNs; cat and idx have rare
    values (c, d; 2.0) under rare_share=0.1."""
    ties = [0] * 12 + [1, 1, 2, 2, 3, 3, 4, 4]
    x = [float(v) for v in range(1, 17)] + [None, None, NAN, NAN]
    cat = ["a"] * 10 + ["b"] * 6 + ["c", "d", None, None]
    idx = [0.0] * 14 + [1.0] * 5 + [2.0]
    rows = list(zip(ties, x, cat, idx, strict=True))
    return spark.createDataFrame(rows, "ties int, x double, cat string, idx double")


def test_profile_bins_and_shares_are_exact(spark: SparkSession) -> None:
    columns, rows = profile_columns(
        profile_frame(spark), ["ties", "x"], ["cat", "idx"], rare_share=0.1
    )

    assert rows == 20
    assert columns == (
        # quantiles 0.1..0.6 are all 0 and merge; 4 (the maximum) is no edge
        ColumnProfile(
            "ties", "numeric", 20, (0.6, 0.1, 0.1, 0.1, 0.1), 0.0, edges=(0.0, 1.0, 2.0, 3.0)
        ),
        # quantile q of the 16 present values is the ceil(16 q)-th smallest
        ColumnProfile(
            "x",
            "numeric",
            20,
            (0.1, 0.1, 0.05, 0.1, 0.05, 0.1, 0.1, 0.05, 0.1, 0.05),
            0.2,
            edges=(2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 12.0, 13.0, 15.0),
        ),
        ColumnProfile(
            "cat",
            "categorical",
            20,
            (0.5, 0.3, 0.1, 0.0),
            0.1,
            categories=("a", "b"),
            other_categories=("c", "d"),
        ),
        ColumnProfile(
            "idx",
            "categorical",
            20,
            (0.7, 0.25, 0.05, 0.0),
            0.0,
            categories=(0.0, 1.0),
            other_categories=(2.0,),
        ),
    )

    # At monitoring time: d still lands in __other__, e and 7.0 (never seen) in __unseen__.
    profile = ReferenceProfile(rows, columns)
    later = spark.createDataFrame(
        [(0, 1.0, "a", 0.0), (5, 16.0, "d", 2.0), (0, None, "e", 7.0), (0, 3.0, None, NAN)],
        "ties int, x double, cat string, idx double",
    )
    shares = measure_drift(later, profile, **RUN).shares
    assert shares == {
        "ties": (0.75, 0.0, 0.0, 0.0, 0.25, 0.0),
        "x": (0.25, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25),
        "cat": (0.25, 0.0, 0.25, 0.25, 0.25),
        "idx": (0.25, 0.0, 0.25, 0.25, 0.25),
    }


def generated(spark: SparkSession, seed: int, shift: float = 0.0) -> DataFrame:
    """4,000 seeded rows: a normal, b uniform, c one of four strings, score from a."""
    a = F.randn(seed) + F.lit(shift)
    c = F.element_at(F.array(*map(F.lit, "wxyz")), (F.floor(F.rand(seed + 2) * 4) + 1).cast("int"))
    return spark.range(4000, numPartitions=2).select(
        a.alias("a"),
        F.rand(seed + 1).alias("b"),
        c.alias("c"),
        (1 / (1 + F.exp(-a))).alias("score"),
    )


@pytest.fixture(scope="module")
def reference(spark: SparkSession) -> ReferenceProfile:
    training = generated(spark, seed=1)
    return reference_profile(training, ["a", "b"], ["c"], scored=training)


def statuses(records: list[MetricRecord]) -> dict[tuple[str, str | None], str]:
    return {(r.metric, r.feature): r.status for r in records}


def test_a_shifted_feature_alerts_and_the_others_do_not(
    spark: SparkSession, reference: ReferenceProfile
) -> None:
    quiet = measure_drift(generated(spark, seed=11), reference, **RUN)
    shifted = measure_drift(generated(spark, seed=11, shift=1.0), reference, **RUN)

    ok = {(m, f): "ok" for m in ("psi", "missing_rate_change") for f in ("a", "b", "c", "score")}
    assert statuses(quiet.records) == {("row_count", None): "ok", **ok}
    # the score is a function of a, so it moves with it
    drifted = {("psi", "a"): "alert", ("psi", "score"): "alert"}
    assert statuses(shifted.records) == {("row_count", None): "ok", **ok, **drifted}


def test_drift_of_all_columns_is_one_spark_job(
    spark: SparkSession, reference: ReferenceProfile
) -> None:
    scored = generated(spark, seed=11)
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("drift", "drift of every column in one pass")
    try:
        measure_drift(scored, reference, **RUN)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert len(tracker.getJobIdsForGroup("drift")) == 1


def test_profile_is_two_passes(spark: SparkSession) -> None:
    """The quantile pass is one job; the grouped count is two under adaptive execution
    (its map stage, then the result), both stages reading the input once."""
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("profile", "profile of every column")
    try:
        profile_columns(generated(spark, seed=1), ["a", "b", "score"], ["c"])
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert len(tracker.getJobIdsForGroup("profile")) == 3


def test_missing_columns_fail_before_any_job(
    spark: SparkSession, reference: ReferenceProfile
) -> None:
    scored = generated(spark, seed=11).select("a", "c")
    error = no_job_runs(spark, lambda: measure_drift(scored, reference, **RUN))
    assert isinstance(error, SchemaError)
    assert str(error) == (
        "Table 'scored rows' is missing required column(s) b, score. "
        "Columns present: a double, c string."
    )


def test_profile_json_round_trip(reference: ReferenceProfile) -> None:
    text = json.dumps(reference.to_dict())
    assert ReferenceProfile.from_dict(json.loads(text)) == reference
    assert ReferenceProfile.from_dict(HAND_PROFILE).to_dict() == HAND_PROFILE


FIX = "Recompute it with reference_profile() from the training data; do not edit it by hand."


def malformed(change: str) -> dict[str, Any]:
    data = copy.deepcopy(HAND_PROFILE)
    x = data["features"][0]
    if change == "shares":
        x["shares"] = [0.4, 0.4, 0.3]
    elif change == "edges":
        x["edges"] = [2.0, 1.0]
    elif change == "key":
        x["bins"] = 3
    elif change == "unseen":
        data["features"][1]["shares"] = [0.5, 0.3, 0.1, 0.1]
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shares", "column 'x' has shares (missing_rate included) summing to 1.1, not 1"),
        ("edges", "column 'x' has edges [2.0, 1.0] not strictly increasing"),
        ("key", "column 'x' has missing key(s) [] and unknown key(s) ['bins']"),
        ("unseen", "column 'plan' has __unseen__ share 0.1; it must be 0"),
    ],
)
def test_a_malformed_profile_is_refused(change: str, message: str) -> None:
    with pytest.raises(ModelCardError) as error:
        ReferenceProfile.from_dict(malformed(change))
    assert str(error.value) == f"Malformed reference profile: {message}. {FIX}"


def test_an_unknown_profile_version_is_refused() -> None:
    with pytest.raises(ModelCardError) as error:
        ReferenceProfile.from_dict({**HAND_PROFILE, "version": 2})
    assert str(error.value) == (
        "Reference profile version 2 is not one this library reads (version 1). "
        "Recompute it with this release's reference_profile()."
    )


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError) as error:
        DriftThresholds(psi_warn=0.3)
    assert str(error.value) == (
        "The 'psi_warn' parameter of DriftThresholds must not exceed 'psi_alert'. "
        "Got 0.3 > 0.25 instead."
    )
