"""BoosterClassifier: the same booster as xgboost.train on the same rows, early stopping's
iteration, two workers training together, and the refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.errors import TrainingDataError
from sparkml_prod.modeling.booster_score import BoosterScore
from sparkml_prod.modeling.booster_train import (
    BoosterClassifier,
    fit_booster,
    prepare_training_rows,
)
from sparkml_prod.modeling.evaluation import evaluate

FEATURES = ["a", "b", "c", "d", "e"]
N = 3000
PARAMS = {
    "n_estimators": 25,
    "max_depth": 3,
    "learning_rate": 0.3,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 2,
    "reg_lambda": 2.0,
    "random_state": 5,
}
# The same settings in xgboost.train's own names.
NATIVE = {
    "objective": "binary:logistic",
    "max_depth": 3,
    "eta": 0.3,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 2,
    "lambda": 2.0,
    "seed": 5,
    "nthread": 1,
}


def data(seed: int = 3) -> pd.DataFrame:
    """Features with ~10% missing (null in a, c, e; NaN in b, d), a noisy logistic label, a
    validation flag on a quarter of the rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, len(FEATURES)))
    signal = x[:, 0] - 0.8 * x[:, 1] + 0.5 * x[:, 2] * x[:, 3]
    label = (rng.random(N) < 1 / (1 + np.exp(-2 * signal))).astype(np.int64)
    x[rng.random(x.shape) < 0.1] = np.nan
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = label
    frame["is_validation"] = rng.random(N) < 0.25
    frame["id"] = np.arange(N)
    return frame


ROWS = data()


@pytest.fixture(scope="module")
def frame(spark: SparkSession) -> DataFrame:
    # Three partitions, in row order; null (not NaN) in a, c and e.
    df = spark.createDataFrame(ROWS).repartitionByRange(3, "id").sortWithinPartitions("id")
    for name in ("a", "c", "e"):
        df = df.withColumn(name, F.when(~F.isnan(name), F.col(name)))
    return df.cache()


def dmatrix(rows: pd.DataFrame) -> xgboost.DMatrix:
    return xgboost.DMatrix(
        rows[FEATURES].to_numpy(np.float32),
        label=rows["label"].to_numpy(),
        missing=math.nan,
        feature_names=FEATURES,
    )


def predictions(booster: xgboost.Booster, trees: int) -> np.ndarray:
    x = ROWS[FEATURES].to_numpy(np.float32)
    return booster.inplace_predict(x, iteration_range=(0, trees), missing=math.nan)


def test_one_worker_gives_xgboost_trains_booster(frame: DataFrame) -> None:
    rows = prepare_training_rows(frame, FEATURES, num_workers=1)
    try:
        stage = fit_booster(rows, PARAMS)
    finally:
        rows.release()
    expected = xgboost.train(NATIVE, dmatrix(ROWS), num_boost_round=25)
    booster = stage.getBooster()
    assert (stage.getNumTrees(), booster.num_boosted_rounds()) == (25, 25)
    assert booster.feature_names == FEATURES
    assert np.array_equal(predictions(booster, 25), predictions(expected, 25))


def test_early_stopping_chooses_xgboost_trains_iteration(frame: DataFrame) -> None:
    params = {**PARAMS, "n_estimators": 300, "learning_rate": 0.5, "max_depth": 5}
    rows = prepare_training_rows(frame, FEATURES, 1, validation_col="is_validation")
    try:
        stage = fit_booster(rows, params, early_stopping_rounds=4)
    finally:
        rows.release()
    valid = ROWS["is_validation"]
    expected = xgboost.train(
        {**NATIVE, "eta": 0.5, "max_depth": 5},
        dmatrix(ROWS[~valid]),
        num_boost_round=300,
        evals=[(dmatrix(ROWS[valid]), "validation")],
        early_stopping_rounds=4,
        verbose_eval=False,
    )
    booster = stage.getBooster()
    assert expected.best_iteration < 295  # it did stop early
    assert booster.best_iteration == expected.best_iteration
    assert stage.getNumTrees() == expected.best_iteration + 1
    assert booster.num_boosted_rounds() == expected.num_boosted_rounds()
    trees = stage.getNumTrees()
    assert np.array_equal(predictions(booster, trees), predictions(expected, trees))


def test_two_workers_train_one_model_in_a_pipeline(
    spark: SparkSession, frame: DataFrame, tmp_path: Path
) -> None:
    train = frame.where(~F.col("is_validation"))
    estimator = BoosterClassifier(
        featureCols=FEATURES, numWorkers=2, xgboostParams={**PARAMS, "n_estimators": 30}
    )
    fitted = Pipeline(stages=[estimator]).fit(train)
    (stage,) = fitted.stages
    assert isinstance(stage, BoosterScore)
    assert (stage.getNumTrees(), stage.getBooster().num_boosted_rounds()) == (30, 30)
    assert stage.getBooster().feature_names == FEATURES
    held_out = frame.where(F.col("is_validation"))
    auc = evaluate(fitted.transform(held_out))["roc_auc"]
    # The label's own probability reaches about 0.86 on these rows.
    assert 0.78 < auc < 0.9, auc
    fitted.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    again = evaluate(loaded.transform(held_out))["roc_auc"]
    assert again == auc


def test_the_estimator_saves_and_loads(tmp_path: Path) -> None:
    estimator = BoosterClassifier(
        featureCols=FEATURES,
        validationCol="is_validation",
        numWorkers=2,
        nthread=2,
        earlyStoppingRounds=5,
        xgboostParams=PARAMS,
    )
    estimator.save(str(tmp_path / "estimator"))
    loaded = BoosterClassifier.load(str(tmp_path / "estimator"))
    assert loaded.extractParamMap() == {
        loaded.getParam(p.name): v for p, v in estimator.extractParamMap().items()
    }


def test_settings_the_library_owns_are_refused() -> None:
    with pytest.raises(ValueError) as err:
        BoosterClassifier(xgboostParams={"n_jobs": 4})
    assert str(err.value) == (
        "The 'xgboostParams' parameter of BoosterClassifier cannot set 'n_jobs': the threads "
        "per worker are model.task_cpus."
    )
    with pytest.raises(ValueError) as err:
        BoosterClassifier(xgboostParams={"max_dept": 4})
    assert str(err.value) == (
        "The 'xgboostParams' parameter of BoosterClassifier got 'max_dept', which is not a "
        "parameter of XGBClassifier."
    )
    with pytest.raises(ValueError) as err:
        BoosterClassifier(numWorkers=0)
    assert str(err.value) == (
        "The 'numWorkers' parameter of BoosterClassifier must be an integer of at least 1. "
        "Got 0 instead."
    )


def test_a_single_label_class_is_refused_before_training(frame: DataFrame) -> None:
    with pytest.raises(TrainingDataError) as err:
        prepare_training_rows(frame.where(F.col("label") == 1), FEATURES, 2)
    count = int((ROWS["label"] == 1).sum())
    assert str(err.value) == (
        f"XGBoost cannot train: the {count} training row(s) have a single label class. "
        "Label 'label' must be 0 or 1 with both classes present in the training rows."
    )
