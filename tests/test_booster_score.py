"""BoosterScore: exact scores against Booster.inplace_predict, persistence, batching, bad input,
and agreement with the xgboost.spark model stages."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from spark_jobs import no_job_runs

from sparkml_prod.core.errors import SchemaError
from sparkml_prod.modeling.booster_score import BOOSTER_FILE, BoosterScore
from sparkml_prod.modeling.stages import ProbabilityScore

FEATURES = ["visits", "amount", "active", "balance", "share"]
SCHEMA = (
    "id bigint, as_of timestamp, visits int, amount double, active boolean, "
    "balance decimal(8,2), share float, label int"
)
ROUNDS = 12
AS_OF = dt.datetime(2024, 7, 1)


def synthetic_rows(n: int = 240, seed: int = 7) -> list[tuple[Any, ...]]:
    """Rows of every feature type; about one value in eight missing, as null or (for the
    floating-point columns) NaN."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        gone = rng.random(5) < 0.125
        visits = None if gone[0] else int(rng.integers(0, 30))
        amount = (math.nan if i % 2 else None) if gone[1] else float(rng.gamma(2.0, 40.0))
        active = None if gone[2] else bool(rng.random() < 0.4)
        balance = None if gone[3] else Decimal(f"{rng.normal(500, 300):.2f}")
        share = (math.nan if i % 2 else None) if gone[4] else float(np.float32(rng.random()))
        signal = (visits or 0) / 10 + (amount or 0) / 80 + (1.5 if active else 0)
        label = int(signal + rng.normal() > 2.5)
        rows.append((i, AS_OF, visits, amount, active, balance, share, label))
    return rows


def matrix(rows: list[tuple[Any, ...]]) -> np.ndarray:
    """The features as XGBoost is given them outside Spark: float64, missing as NaN."""

    def number(value: Any) -> float:
        return math.nan if value is None else float(value)

    return np.array([[number(v) for v in row[2:7]] for row in rows], dtype=np.float64)


ROWS = synthetic_rows()
X = matrix(ROWS)
LABELS = np.array([row[-1] for row in ROWS])


@pytest.fixture(scope="module")
def booster() -> xgboost.Booster:
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": 1, "nthread": 1}
    train = xgboost.DMatrix(X, label=LABELS, missing=np.nan)
    return xgboost.train(params, train, num_boost_round=ROUNDS)


@pytest.fixture(scope="module")
def frame(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(ROWS, SCHEMA)


def expected(spark: SparkSession, booster: xgboost.Booster, trees: int = ROUNDS) -> DataFrame:
    """The input rows, each with ``inplace_predict``'s score of its numpy row (float32 widened)."""
    scores = booster.inplace_predict(X, iteration_range=(0, trees)).astype(np.float64)
    rows = [(*row, float(score)) for row, score in zip(ROWS, scores, strict=True)]
    return spark.createDataFrame(rows, f"{SCHEMA}, score double")


def assert_same_rows(actual: DataFrame, wanted: DataFrame) -> None:
    """Row by row, in order: scoring keeps the input's partitions and their row order."""
    assert_df_equality(actual, wanted, allow_nan_equality=True, ignore_nullable=True)


@pytest.fixture()
def arrow_batch_rows(spark: SparkSession) -> Iterator[None]:
    """Spark's Arrow batches of 7 rows (restored afterwards)."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "7")
    yield
    spark.conf.set(key, before)


def test_scores_equal_inplace_predict_exactly(
    spark: SparkSession, booster: xgboost.Booster, frame: DataFrame
) -> None:
    stage = BoosterScore.from_booster(booster, FEATURES, num_trees=ROUNDS)
    assert_same_rows(stage.transform(frame), expected(spark, booster))

    fewer = stage.copy({stage.numTrees: 4})
    assert_same_rows(fewer.transform(frame), expected(spark, booster, trees=4))
    full = booster.inplace_predict(X)
    assert not np.array_equal(booster.inplace_predict(X, iteration_range=(0, 4)), full)


def test_a_booster_of_one_feature(spark: SparkSession, frame: DataFrame) -> None:
    # A one-column Arrow UDF receives bare arrays instead of tuples of them.
    x = X[:, :1]
    one = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgboost.DMatrix(x, label=LABELS, missing=np.nan),
        num_boost_round=3,
    )
    scores = one.inplace_predict(x).astype(np.float64)
    wanted = spark.createDataFrame(
        [(row[0], float(s)) for row, s in zip(ROWS, scores, strict=True)], "id long, score double"
    )
    stage = BoosterScore.from_booster(one, FEATURES[:1], num_trees=3)
    assert_same_rows(stage.transform(frame).select("id", "score"), wanted)


def test_round_trips_inside_a_pipeline_model(
    spark: SparkSession, booster: xgboost.Booster, frame: DataFrame, tmp_path: Path
) -> None:
    segment = SQLTransformer(statement="SELECT *, 'web' AS segment FROM __THIS__")
    stage = BoosterScore.from_booster(booster, FEATURES, 5, output_col="p", nthread=2)
    path = str(tmp_path / "model")
    PipelineModel(stages=[segment, stage]).write().overwrite().save(path)

    loaded = PipelineModel.load(path)
    restored = loaded.stages[1]
    assert isinstance(restored, BoosterScore)
    assert (restored.uid, restored.getFeatureCols(), restored.getNumTrees()) == (
        stage.uid,
        FEATURES,
        5,
    )
    assert (restored.getOutputCol(), restored.getNthread(), restored.getBatchRows()) == (
        "p",
        2,
        100_000,
    )
    assert (tmp_path / "model" / "stages" / f"1_{stage.uid}" / BOOSTER_FILE).is_file()
    wanted = (
        expected(spark, booster, trees=5)
        .withColumn("segment", F.lit("web"))
        .select(*frame.columns, "segment", F.col("score").alias("p"))
    )
    assert_same_rows(loaded.transform(frame), wanted)


@pytest.mark.usefixtures("arrow_batch_rows")
def test_small_arrow_batches_and_empty_input(
    spark: SparkSession, booster: xgboost.Booster, frame: DataFrame
) -> None:
    stage = BoosterScore.from_booster(booster, FEATURES, ROUNDS)
    for batch_rows in (1, 50, 1_000):  # each batch alone, 7 batches per call, all at once
        scored = stage.copy({stage.batchRows: batch_rows}).transform(frame)
        assert_same_rows(scored, expected(spark, booster))

    empty = stage.transform(frame.where("id < 0"))
    assert_df_equality(empty, expected(spark, booster).limit(0), ignore_nullable=True)


def test_bad_input_is_named_before_any_job(
    spark: SparkSession, booster: xgboost.Booster, frame: DataFrame
) -> None:
    stage = BoosterScore.from_booster(booster, FEATURES, ROUNDS)
    err = no_job_runs(spark, lambda: stage.transform(frame.drop("amount")))
    assert isinstance(err, SchemaError)
    assert str(err) == (
        "Table 'input of BoosterScore' is missing required column(s) amount. Columns present: "
        "id bigint, as_of timestamp, visits int, active boolean, balance decimal(8,2), "
        "share float, label int."
    )
    as_text = frame.withColumn("visits", F.col("visits").cast("string"))
    err = no_job_runs(spark, lambda: stage.transform(as_text))
    assert str(err) == (
        "Table 'input of BoosterScore' column 'visits' has type string; expected tinyint or "
        "smallint or int or bigint or float or double or decimal or boolean. Columns present: "
        "id bigint, as_of timestamp, visits string, amount double, active boolean, "
        "balance decimal(8,2), share float, label int."
    )
    err = no_job_runs(spark, lambda: stage.transform(frame.withColumn("score", F.lit(0.5))))
    assert isinstance(err, ValueError)
    assert str(err) == (
        "BoosterScore would add column 'score' that its input already has; drop it from the "
        "input or set outputCol to another name."
    )
    no_booster = BoosterScore(featureCols=FEATURES, numTrees=3)
    err = no_job_runs(spark, lambda: no_booster.transform(frame))
    assert str(err) == (
        "BoosterScore has no booster: build it with BoosterScore.from_booster(booster, "
        "feature_cols, num_trees), or load a saved one."
    )


def test_bad_settings_are_refused_when_set(booster: xgboost.Booster) -> None:
    with pytest.raises(ValueError) as err:
        BoosterScore(numTrees=0)
    assert str(err.value) == (
        "The 'numTrees' parameter of BoosterScore must be an integer of at least 1. Got 0 instead."
    )
    with pytest.raises(ValueError) as err:
        BoosterScore.from_booster(booster, FEATURES[:4], ROUNDS)
    assert str(err.value) == (
        "The 'featureCols' parameter of BoosterScore lists 4 columns but the booster has 5 "
        "features."
    )
    with pytest.raises(ValueError) as err:
        BoosterScore.from_booster(booster, FEATURES, ROUNDS + 1)
    assert str(err.value) == (
        "The 'numTrees' parameter of BoosterScore must be at most the booster's 12 boosting "
        "rounds. Got 13 instead."
    )
    named = xgboost.train(
        {"objective": "binary:logistic"},
        xgboost.DMatrix(X[:20], label=LABELS[:20], feature_names=["a", "b", "c", "d", "e"]),
        num_boost_round=1,
    )
    with pytest.raises(ValueError) as err:
        BoosterScore.from_booster(named, FEATURES, 1)
    assert str(err.value) == (
        "The booster's features are named ['a', 'b', 'c', 'd', 'e'] but feature_cols are "
        "['visits', 'amount', 'active', 'balance', 'share']: pass the columns in the "
        "booster's feature order."
    )
    regression = xgboost.train(
        {"objective": "reg:squarederror"}, xgboost.DMatrix(X[:20], label=LABELS[:20]), 1
    )
    with pytest.raises(ValueError) as err:
        BoosterScore.from_booster(regression, FEATURES, 1)
    assert str(err.value) == (
        "BoosterScore scores binary classifiers (objective binary:logistic); this booster's "
        "objective is reg:squarederror."
    )


@pytest.mark.slow
def test_scores_equal_the_xgboost_spark_stages(spark: SparkSession, frame: DataFrame) -> None:
    # The stages the library trained and scored with before BoosterClassifier.
    from pyspark.ml.feature import VectorAssembler
    from xgboost.spark import SparkXGBClassifier

    stages = [
        VectorAssembler(inputCols=FEATURES, outputCol="features", handleInvalid="keep"),
        SparkXGBClassifier(
            features_col="features",
            num_workers=1,
            missing=math.nan,
            n_estimators=20,
            max_depth=3,
            verbose=False,
        ),
        ProbabilityScore(inputCol="probability", outputCol="score"),
    ]
    fitted = Pipeline(stages=stages).fit(frame)
    spark_scores = fitted.transform(frame).select("id", "score")

    stage = BoosterScore.from_booster(fitted.stages[1].get_booster(), FEATURES, 20)
    ours = stage.transform(frame).select("id", "score")
    # Exact: xgboost.spark's probability is scipy's expit of the float32 margin, widened;
    # here it agrees bit for bit with the booster's own sigmoid.
    assert_df_equality(ours.orderBy("id"), spark_scores.orderBy("id"), ignore_nullable=True)
