"""The hashed holdout and the action's uplift, on hand-counted examples."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.errors import ConfigError, TrainingDataError
from sparkml_prod.monitoring.impact import action_impact, assign_holdout
from sparkml_prod.runs.score import assign_variant

AS_OF = dt.date(2024, 6, 1)
SALT = "2024-q2"
USERS = 100_000
Z95 = 1.959963984540054


@pytest.fixture(scope="module")
def users(spark: SparkSession) -> DataFrame:
    user = F.col("user_id")
    return (
        spark.range(USERS)
        .withColumnRenamed("id", "user_id")
        .select(
            "user_id",
            assign_holdout(user, SALT, 0.1).alias("h10"),
            assign_holdout(user, SALT, 0.2).alias("h20"),
            assign_holdout(user, SALT, 0.02).alias("h02"),
            (assign_variant(user, SALT, 0.3) == "challenger").alias("challenger"),
        )
        .cache()
    )


def test_holdout_shares_and_nesting(users: DataFrame) -> None:
    row = users.agg(
        *[F.avg(F.col(c).cast("double")).alias(c) for c in ("h02", "h10", "h20")],
        F.sum((F.col("h10") & ~F.col("h20")).cast("int")).alias("dropped_10"),
        F.sum((F.col("h02") & ~F.col("h10")).cast("int")).alias("dropped_02"),
    ).head()
    assert abs(row["h02"] - 0.02) <= 0.005
    assert abs(row["h10"] - 0.1) <= 0.005
    assert abs(row["h20"] - 0.2) <= 0.005
    # Raising the share only adds users: nobody held out at 2% or 10% leaves at 20%.
    assert (row["dropped_10"], row["dropped_02"]) == (0, 0)


def test_holdout_is_stable_under_repartitioning(spark: SparkSession, users: DataFrame) -> None:
    again = (
        spark.range(USERS)
        .repartition(7)
        .select(F.col("id").alias("user_id"), assign_holdout(F.col("id"), SALT, 0.1).alias("again"))
    )
    joined = users.join(again, "user_id")
    assert joined.count() == USERS
    assert joined.where(F.col("h10") != F.col("again")).count() == 0


def test_holdout_is_independent_of_the_variant(users: DataFrame) -> None:
    cells = {
        (r["challenger"], r["h10"]): r["count"]
        for r in users.groupBy("challenger", "h10").count().collect()
    }
    challengers = cells[True, True] + cells[True, False]
    assert abs(challengers / USERS - 0.3) <= 0.005
    # The holdout share among challenger and champion users is the overall share, and
    # each cell of the cross-tab is near the product of the margins.
    assert abs(cells[True, True] / challengers - 0.1) <= 0.01
    assert abs(cells[False, True] / (USERS - challengers) - 0.1) <= 0.01
    held = cells[True, True] + cells[False, True]
    for (challenger, holdout), count in cells.items():
        share_v = challengers / USERS if challenger else 1 - challengers / USERS
        share_h = held / USERS if holdout else 1 - held / USERS
        assert abs(count / USERS - share_v * share_h) <= 0.003


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan"), True, "0.1", None])
def test_holdout_share_must_be_a_share(share: object) -> None:
    with pytest.raises(ConfigError) as info:
        assign_holdout(F.col("user_id"), SALT, share)  # type: ignore[arg-type]
    assert str(info.value) == (
        "The 'holdout share' must be a number in [0, 1] (a share of users, such as 0.05). "
        f"Got {share!r} instead."
    )


# Hand-written counts: ten score levels of 100 users each (level k has score
# 1.05 - k / 10, so level 1 is decile 1); per targeted decile
# (acted-upon users, their outcomes, holdout users, their outcomes).
COUNTS = {1: (80, 40, 20, 6), 2: (90, 30, 10, 2), 3: (85, 17, 15, 3)}
# Untargeted deciles: 100 acted-upon users with 50 outcomes, no holdout (left out).


def _expected(t: int, to: int, h: int, ho: int) -> dict:
    p1, p0 = to / t, ho / h
    half = Z95 * math.sqrt(p1 * (1 - p1) / t + p0 * (1 - p0) / h)
    return {
        "treated_rate": p1,
        "holdout_rate": p0,
        "treated_n": t,
        "holdout_n": h,
        "treated_outcomes": to,
        "holdout_outcomes": ho,
        "low": p1 - p0 - half,
        "high": p1 - p0 + half,
        "significant": p1 - p0 - half > 0 or p1 - p0 + half < 0,
        "level": 0.95,
    }


@pytest.fixture(scope="module")
def example(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    scores, outcomes, user = [], [], 0
    for level in range(1, 11):
        treated, treated_y, held, held_y = COUNTS.get(level, (100, 50, 0, 0))
        for i in range(100):
            user += 1
            holdout = i >= treated
            y = int(i < treated_y) if not holdout else int(i - treated < held_y)
            scores.append((user, AS_OF, round(1.05 - level / 10, 2), "champion", 2, holdout))
            outcomes.append((user, y))
            # Another date's rows are ignored.
            scores.append((user, dt.date(2024, 5, 1), 0.5, "champion", 1, True))
    schema = (
        "user_id bigint, as_of date, score double, variant string, model_version int, "
        "holdout boolean"
    )
    return (
        spark.createDataFrame(scores, schema),
        spark.createDataFrame(outcomes, "user_id bigint, outcome int"),
    )


def test_uplift_overall_and_per_decile(example: tuple[DataFrame, DataFrame]) -> None:
    records = action_impact(*example, as_of=AS_OF, model_name="churn", target_share=0.3)
    assert [(r.feature, r.variant, r.model_version, r.status) for r in records] == [
        (None, "champion", 2, "ok"),
        ("decile_1", "champion", 2, "ok"),
        ("decile_2", "champion", 2, "ok"),
        ("decile_3", "champion", 2, "ok"),
    ]
    overall = [sum(c[i] for c in COUNTS.values()) for i in range(4)]
    assert overall == [255, 87, 45, 11]
    expected = [overall, *COUNTS.values()]
    for record, counts in zip(records, expected, strict=True):
        want = _expected(*counts)
        assert (record.metric, record.as_of, record.model_name) == ("uplift", AS_OF, "churn")
        assert record.value == pytest.approx(want["treated_rate"] - want["holdout_rate"])
        assert json.loads(record.detail) == {
            k: (pytest.approx(v, abs=1e-12) if isinstance(v, float) else v) for k, v in want.items()
        }


def test_everyone_targeted_without_holdout_warns(example: tuple[DataFrame, DataFrame]) -> None:
    records = action_impact(*example, as_of=AS_OF, model_name="churn")
    assert [(r.feature, r.status) for r in records] == [
        (None, "ok"),
        *[(f"decile_{k}", "ok") for k in (1, 2, 3)],
        *[(f"decile_{k}", "warn") for k in range(4, 11)],
    ]
    assert records[-1].value is None
    assert json.loads(records[-1].detail) == {
        "reason": "100 acted-upon and 0 holdout user(s): no comparison"
    }
    # Everyone targeted: the untargeted deciles' 700 acted-upon users join the overall.
    assert json.loads(records[0].detail)["treated_n"] == 255 + 700


def test_outcome_must_be_binary(spark: SparkSession, example: tuple[DataFrame, DataFrame]) -> None:
    outcomes = spark.createDataFrame([(1, 2)], "user_id bigint, outcome int")
    with pytest.raises(TrainingDataError, match=r"1 value\(s\) other than 0 and 1"):
        action_impact(example[0], outcomes, as_of=AS_OF, model_name="churn")


def test_target_share_must_be_a_share(example: tuple[DataFrame, DataFrame]) -> None:
    with pytest.raises(ConfigError, match=r"The 'target_share' must be a number in \(0, 1\]"):
        action_impact(*example, as_of=AS_OF, model_name="churn", target_share=0.0)
