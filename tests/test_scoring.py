"""Batch scoring: exact output rows, idempotent partitions, variants, schema drift."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cards import make_card
from chispa import assert_df_equality
from pyspark.ml import Pipeline
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import ChallengerConfig, ScoreConfig, ScoringSpineConfig
from sparkml_prod.core.errors import EmptyResultError, ModelNotFoundError, SchemaError
from sparkml_prod.core.tables import read_table, table_exists, write_table
from sparkml_prod.features import WindowAggregates
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.runs.score import BUCKETS, assign_variant, run_scoring, variant_bucket

T = dt.datetime
A, B = dt.date(2024, 3, 10), dt.date(2024, 3, 20)
EVENTS_SCHEMA = "user_id long, event_time timestamp, event_type string, amount double"
EVENTS = [
    (1, T(2024, 3, 9), "page_view", None),  # user 1: 2 events in the 7 days before A
    (1, T(2024, 3, 3), "purchase", 5.0),  # exactly A - 7d: inside
    (2, T(2024, 3, 5), "page_view", None),  # user 2: 1 event before A
    (3, T(2024, 3, 10), "page_view", None),  # user 3: at A exactly: not seen at A
    (3, T(2024, 3, 15), "page_view", None),  # user 3: seen at B
    (4, T(2024, 2, 1), "page_view", None),  # user 4: never active in the windows
]
OUT_SCHEMA = (
    "user_id long, as_of date, score double, model_name string, model_version int, variant string"
)
# score = 1 / (1 + events in the 7 days before as-of); the challenger halves it
CHAMPION_SQL = "SELECT *, 1.0D / (1.0D + event_count_7d) AS score FROM __THIS__"
CHALLENGER_SQL = "SELECT *, 0.5D / (1.0D + event_count_7d) AS score FROM __THIS__"


@pytest.fixture(scope="module")
def setup(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("scoring")
    events = str(root / "events")
    write_table(spark.createDataFrame(EVENTS, EVENTS_SCHEMA), events)
    spine = spark.createDataFrame([(1, T(2024, 3, 1))], "user_id long, as_of timestamp")
    registry = ModelRegistry(spark, str(root / "models"))
    card = make_card(events=events, lookback="7d")
    for sql in (CHAMPION_SQL, CHALLENGER_SQL):
        stages = [
            WindowAggregates(sourceTable=events, windows=["7d"], aggregations=[{"agg": "count"}]),
            SQLTransformer(statement=sql),
        ]
        registry.register("m", Pipeline(stages=stages).fit(spine), card)
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "challenger", 2)
    return {"root": root, "events": events, "registry": str(root / "models")}


def config(setup: dict[str, Any], output: str, **overrides: Any) -> ScoreConfig:
    settings: dict[str, Any] = {
        "model": "m@production",
        "registry_root": setup["registry"],
        "output_table": str(setup["root"] / output),
    }
    settings.update(overrides)
    return ScoreConfig(**settings)


def written(spark: SparkSession, table: str, as_of: dt.date) -> DataFrame:
    return (
        read_table(spark, table)
        .where(F.col("as_of") == F.lit(as_of))
        .select("user_id", "as_of", "score", "model_name", "model_version", "variant")
    )


def expected(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, OUT_SCHEMA)


def test_scores_every_active_user_once_per_as_of_and_reruns_replace_the_partition(
    spark: SparkSession, setup: dict[str, Any]
) -> None:
    cfg = config(setup, "scores")
    first = run_scoring(spark, cfg, A)
    assert first.rows == 2 and first.by_variant == {"champion": 2}
    at_a = [(1, A, 1 / 3, "m", 1, "champion"), (2, A, 1 / 2, "m", 1, "champion")]
    assert_df_equality(
        written(spark, cfg.output_table, A),
        expected(spark, at_a),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    run_scoring(spark, cfg, B)
    before = read_table(spark, cfg.output_table).where(F.col("as_of") == F.lit(B)).collect()

    rerun = run_scoring(spark, cfg, A)  # the same date again: replaced, not appended
    table = read_table(spark, cfg.output_table)
    assert_df_equality(
        written(spark, cfg.output_table, A),
        expected(spark, at_a),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert {r["run_id"] for r in table.where(F.col("as_of") == F.lit(A)).collect()} == {
        rerun.run_id
    }
    # the other date is untouched: same rows, same run id and time
    assert_df_equality(
        table.where(F.col("as_of") == F.lit(B)),
        spark.createDataFrame(before, table.schema),
        ignore_row_order=True,
    )
    at_b = [(3, B, 1 / 2, "m", 1, "champion")]  # user 1 left the window
    assert_df_equality(
        written(spark, cfg.output_table, B),
        expected(spark, at_b),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_assignment_is_stable_and_shares_hold_on_100k_users(spark: SparkSession) -> None:
    users = spark.range(100_000).withColumnRenamed("id", "user_id")

    def assigned(frame: DataFrame, share: float) -> DataFrame:
        return frame.select("user_id", assign_variant(F.col("user_id"), "salt-1", share).alias("v"))

    ten = assigned(users, 0.10)
    shares = {r["v"]: r["count"] / 100_000 for r in ten.groupBy("v").count().collect()}
    assert abs(shares["challenger"] - 0.10) < 0.005, shares
    # the same users get the same variant whatever the partitioning (another run)
    assert_df_equality(assigned(users.repartition(7), 0.10), ten, ignore_row_order=True)
    # raising the share only moves users into the challenger
    moved = ten.join(assigned(users, 0.25).withColumnRenamed("v", "v25"), "user_id")
    transitions = {
        (r["v"], r["v25"]): r["count"] for r in moved.groupBy("v", "v25").count().collect()
    }
    assert ("challenger", "champion") not in transitions
    assert (
        abs(sum(n for (_, v), n in transitions.items() if v == "challenger") / 1e5 - 0.25) < 0.005
    )
    # buckets cover [0, BUCKETS): 10 users a bucket on average, so almost none is empty
    stats = (
        users.select(variant_bucket(F.col("user_id"), "salt-1").alias("b"))
        .agg(F.min("b"), F.max("b"), F.countDistinct("b"))
        .head()
    )
    assert stats is not None and (stats[0], stats[1]) == (0, BUCKETS - 1) and stats[2] > 9_990
    # a different salt is a different experiment: a different split
    other = assigned(users, 0.10).join(
        users.select("user_id", assign_variant(F.col("user_id"), "salt-2", 0.10).alias("v2")),
        "user_id",
    )
    both = other.where((F.col("v") == "challenger") & (F.col("v2") == "challenger")).count()
    assert 500 < both < 1500  # about 0.1 * 0.1 of the users: independent


def test_each_user_is_scored_by_exactly_one_model(
    spark: SparkSession, setup: dict[str, Any]
) -> None:
    challenger = ChallengerConfig(model="m@challenger", share=0.5, salt="s")
    cfg = config(setup, "scores_split", challenger=challenger)
    run = run_scoring(spark, cfg, A)
    assert run.rows == 2
    out = written(spark, cfg.output_table, A)
    variants = {
        r["user_id"]: r["v"]
        for r in spark.createDataFrame([(1,), (2,)], "user_id long")
        .select("user_id", assign_variant(F.col("user_id"), "s", 0.5).alias("v"))
        .collect()
    }
    events_before_a = {1: 2, 2: 1}
    rows = [
        (
            u,
            A,
            (1.0 if variants[u] == "champion" else 0.5) / (1 + events_before_a[u]),
            "m",
            1 if variants[u] == "champion" else 2,
            variants[u],
        )
        for u in (1, 2)
    ]
    assert_df_equality(out, expected(spark, rows), ignore_row_order=True, ignore_nullable=True)


def test_shadow_mode_serves_the_champion_and_logs_the_challenger(
    spark: SparkSession, setup: dict[str, Any]
) -> None:
    shadow_table = str(setup["root"] / "shadow")
    challenger = ChallengerConfig(model="m/2", shadow=True, shadow_table=shadow_table)
    cfg = config(setup, "scores_shadow", challenger=challenger)
    run_scoring(spark, cfg, A)
    served = [(1, A, 1 / 3, "m", 1, "champion"), (2, A, 1 / 2, "m", 1, "champion")]
    shadow = [(1, A, 0.5 / 3, "m", 2, "shadow"), (2, A, 0.25, "m", 2, "shadow")]
    assert_df_equality(
        written(spark, cfg.output_table, A),
        expected(spark, served),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert_df_equality(
        written(spark, shadow_table, A),
        expected(spark, shadow),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def drifted_events(spark: SparkSession, setup: dict[str, Any], name: str, frame: DataFrame) -> str:
    path = str(setup["root"] / name)
    write_table(frame, path, mode="overwrite")
    return path


def test_a_source_missing_a_column_fails_before_scoring(
    spark: SparkSession, setup: dict[str, Any]
) -> None:
    events = read_table(spark, setup["events"])
    path = drifted_events(spark, setup, "events_no_amount", events.drop("amount"))
    cfg = config(setup, "scores_drift", sources={setup["events"]: path})
    with pytest.raises(SchemaError) as error:
        run_scoring(spark, cfg, A)
    assert str(error.value) == (
        f"Table '{path}' is missing column 'amount'; model m/1 was trained with 'amount' "
        f"double from '{setup['events']}'. Columns present: user_id bigint, event_time "
        "timestamp, event_type string. Nothing was scored or written."
    )
    assert not table_exists(spark, cfg.output_table)


def test_a_source_column_of_another_type_fails_before_scoring(
    spark: SparkSession, setup: dict[str, Any]
) -> None:
    events = read_table(spark, setup["events"]).withColumn("amount", F.col("amount").cast("string"))
    path = drifted_events(spark, setup, "events_amount_string", events)
    cfg = config(setup, "scores_type_drift", sources={setup["events"]: path})
    with pytest.raises(
        SchemaError,
        match="has column 'amount' of type string; model m/1 was trained with 'amount' double",
    ):
        run_scoring(spark, cfg, A)
    assert not table_exists(spark, cfg.output_table)


def test_an_empty_result_is_refused_and_the_previous_output_kept(
    spark: SparkSession, setup: dict[str, Any]
) -> None:
    cfg = config(setup, "scores_empty")
    run_scoring(spark, cfg, A)
    before = read_table(spark, cfg.output_table).collect()
    nobody = str(setup["root"] / "no_users")
    write_table(spark.createDataFrame([], "user_id long"), nobody)
    empty = config(setup, "scores_empty", spine=ScoringSpineConfig(users_table=nobody))
    with pytest.raises(EmptyResultError, match="Scoring as-of 2024-03-10 produced no rows"):
        run_scoring(spark, empty, A)
    after = read_table(spark, cfg.output_table)
    assert_df_equality(after, spark.createDataFrame(before, after.schema), ignore_row_order=True)


def test_an_unknown_model_alias_is_a_clear_error(
    spark: SparkSession, setup: dict[str, Any], tmp_path: Path
) -> None:
    cfg = config(setup, "scores_unknown", model="m@staging")
    with pytest.raises(ModelNotFoundError, match="staging"):
        run_scoring(spark, cfg, A)
    assert not table_exists(spark, cfg.output_table)
