"""XGBoost training on Spark: ``xgboost.train`` in ``num_workers`` tasks fed Arrow batches.

The rows are prepared once (:func:`prepare_training_rows`): the feature columns cast to
float (what XGBoost stores anyway), the label, the validation flag, spread over
``num_workers`` partitions and persisted, with one Spark job that fills the cache and
counts the rows and classes. Each fit (:func:`fit_booster`, one per search candidate) is
then one Spark job of ``num_workers`` tasks over the persisted rows: each task receives
its partition as Arrow record batches (``DataFrame.mapInArrow``), builds a
``xgboost.QuantileDMatrix`` straight from the batches' feature columns (no vector, no
per-row object), and runs ``xgboost.train`` with ``nthread`` threads. With more than one
worker the tasks run as a barrier stage and train together through XGBoost's collective
(a ``RabitTracker`` on the driver, ``CommunicatorContext`` in each task), as
xgboost.spark does; with one worker the task reads the partitions in order and trains
alone, so the booster is the one ``xgboost.train`` gives on the same rows in the same
order. Partition 0 returns the booster's bytes.

Early stopping evaluates only the validation rows (flagged), with XGBoost's default
metric for ``binary:logistic`` (log loss) unless ``eval_metric`` says otherwise; no
metric is computed on the training rows. The result is a
:class:`~sparkml_prod.modeling.booster_score.BoosterScore` that predicts with
``best_iteration + 1`` trees after early stopping, else with every tree.

Parameters use XGBoost's scikit-learn names (``n_estimators``, ``learning_rate``,
``max_depth``, ``subsample``, ``reg_lambda``, ...), translated to the booster's by
``xgboost.XGBClassifier.get_xgb_params``, as xgboost.spark translates them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xgboost
from pyspark import StorageLevel, keyword_only
from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.errors import ConfigError, TrainingDataError
from sparkml_prod.core.tables import NUMERIC, require_columns
from sparkml_prod.modeling.booster_score import BoosterScore, integer_at_least

__all__ = [
    "BoosterClassifier",
    "DEFAULT_TREES",
    "MANAGED_PARAMS",
    "TrainingRows",
    "booster_params",
    "fit_booster",
    "prepare_training_rows",
    "xgboost_param_names",
]

#: XGBoost's number of trees when the params set no ``n_estimators``.
DEFAULT_TREES = 200
#: XGBClassifier parameters the library sets itself, and why.
MANAGED_PARAMS = {
    "n_jobs": "the threads per worker are model.task_cpus",
    "early_stopping_rounds": "set model.early_stopping_rounds instead",
    "objective": "the model is a binary classifier (binary:logistic)",
    "missing": "null and NaN are both missing",
    "device": "training runs on CPU",
    "callbacks": "callbacks are not supported",
    "enable_categorical": "categorical features are indexed by the feature stages",
    "feature_types": "the feature types come from the columns",
    "feature_weights": "feature weights are not supported",
    "importance_type": "importance is total gain",
}
_LABEL = "__booster_label"
_VALID = "__booster_validation"
_FEATURE_TYPES = (*NUMERIC, "boolean")
_RESULT_SCHEMA = "booster binary"


def xgboost_param_names() -> list[str]:
    """The parameter names ``model.params`` may use: XGBClassifier's, less the managed ones."""
    return sorted(set(xgboost.XGBClassifier().get_params()) - set(MANAGED_PARAMS))


def booster_params(params: Mapping[str, Any], nthread: int) -> tuple[dict[str, Any], int]:
    """The booster params of ``xgboost.train`` and its number of rounds, from
    scikit-learn-style params (``n_estimators`` is the number of rounds)."""
    rest = {k: v for k, v in params.items() if k != "n_estimators"}
    native = xgboost.XGBClassifier(**rest).get_xgb_params()
    out = {k: v for k, v in native.items() if v is not None}
    out.update(objective="binary:logistic", nthread=nthread)
    return out, int(params.get("n_estimators", DEFAULT_TREES))


@dataclass
class TrainingRows:
    """Rows prepared for :func:`fit_booster` (persisted: call :meth:`release` when done)."""

    frame: DataFrame
    features: list[str]
    num_workers: int
    has_validation: bool
    train_rows: int
    validation_rows: int

    def release(self) -> None:
        self.frame.unpersist()


def prepare_training_rows(
    rows: DataFrame,
    features: Sequence[str],
    num_workers: int,
    label_col: str = "label",
    validation_col: str | None = None,
) -> TrainingRows:
    """Select, cast, partition (``num_workers``) and persist the rows; one job counts them.

    ``validation_col`` (boolean) flags the rows early stopping evaluates; the others train.
    Raises :class:`~sparkml_prod.core.errors.TrainingDataError` when the training rows are
    empty or of one label class, or a validation flag is given and no row has it.
    """
    features = list(features)
    expected: dict[str, tuple[str, ...]] = dict.fromkeys(features, _FEATURE_TYPES)
    expected[label_col] = _FEATURE_TYPES
    if validation_col:
        expected[validation_col] = ("boolean",)
    require_columns(rows, expected, table="training rows of XGBoost")
    columns = [F.col(f).cast("float").alias(f) for f in features]
    columns.append(F.col(label_col).cast("float").alias(_LABEL))
    if validation_col:
        columns.append(F.coalesce(F.col(validation_col), F.lit(False)).alias(_VALID))
    frame = rows.select(*columns)
    # One worker reads the partitions in order (coalesce(1) when it trains); several get
    # a round-robin share each, a shuffle that also separates the barrier stage.
    if num_workers > 1:
        frame = frame.repartition(num_workers)
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    flag = F.col(_VALID) if validation_col else F.lit(False)
    counts = frame.agg(
        F.sum(F.when(~flag, 1).otherwise(0)).alias("train"),
        F.sum(F.when(~flag & (F.col(_LABEL) == 1), 1).otherwise(0)).alias("positives"),
        F.sum(F.when(~flag & (F.col(_LABEL) == 0), 1).otherwise(0)).alias("negatives"),
        F.sum(F.when(flag, 1).otherwise(0)).alias("validation"),
    ).head()
    assert counts is not None
    train, positives, negatives, validation = (int(v or 0) for v in counts)
    problem = None
    if positives + negatives != train:
        problem = f"{train - positives - negatives} training row(s) have a label other than 0 or 1"
    elif not positives or not negatives:
        problem = f"the {train} training row(s) have a single label class"
    elif validation_col and not validation:
        problem = f"no row has the validation flag '{validation_col}' (early stopping needs some)"
    if problem:
        frame.unpersist()
        raise TrainingDataError(
            f"XGBoost cannot train: {problem}. Label '{label_col}' must be 0 or 1 with both "
            "classes present in the training rows."
        )
    return TrainingRows(frame, features, num_workers, bool(validation_col), train, validation)


def fit_booster(
    rows: TrainingRows,
    params: Mapping[str, Any],
    *,
    nthread: int = 1,
    early_stopping_rounds: int | None = None,
    output_col: str = "score",
) -> BoosterScore:
    """Train one booster on prepared rows (one Spark job); return its scoring stage."""
    native, rounds = booster_params(params, nthread)
    if early_stopping_rounds and not rows.has_validation:
        raise ConfigError(
            "early_stopping_rounds is set but the training rows have no validation flag: "
            "prepare them with validation_col, or turn early stopping off."
        )
    train = partial(
        _train_task,
        features=rows.features,
        params=native,
        rounds=rounds,
        early_stopping_rounds=early_stopping_rounds or None,
        has_validation=rows.has_validation,
    )
    if rows.num_workers == 1:
        result = rows.frame.coalesce(1).mapInArrow(partial(train, collective=None), _RESULT_SCHEMA)
        collected = result.collect()
    else:
        spark = rows.frame.sparkSession
        with _tracker(spark, rows.num_workers) as collective:
            result = rows.frame.mapInArrow(
                partial(train, collective=collective), _RESULT_SCHEMA, barrier=True
            )
            collected = result.collect()
    (row,) = collected
    booster = xgboost.Booster()
    booster.load_model(bytearray(row["booster"]))
    trees = booster.best_iteration + 1 if early_stopping_rounds else rounds
    return BoosterScore.from_booster(booster, rows.features, trees, output_col, nthread=nthread)


@contextmanager
def _tracker(spark: SparkSession, workers: int) -> Iterator[dict[str, Any]]:
    """XGBoost's tracker on the driver for ``workers`` workers; yields the workers' args."""
    from xgboost.tracker import RabitTracker

    host = spark.sparkContext.getConf().get("spark.driver.host")
    tracker = RabitTracker(n_workers=workers, host_ip=host, sortby="task")
    tracker.start()
    waiting = threading.Thread(target=tracker.wait_for, daemon=True)
    waiting.start()
    yield {"n_workers": workers, **tracker.worker_args()}
    waiting.join(timeout=60)


# -- in the Spark tasks -----------------------------------------------------------------


class _Batches(xgboost.DataIter):
    """The feature columns and labels of a task's record batches, one batch at a time."""

    def __init__(self, batches: list[pa.RecordBatch], features: list[str]) -> None:
        self._batches = batches
        self._features = features
        self._at = 0
        super().__init__(release_data=True)

    def next(self, input_data: Any) -> bool:
        if self._at == len(self._batches):
            return False
        batch = self._batches[self._at]
        input_data(
            data=pa.Table.from_batches([batch]).select(self._features),
            label=batch.column(_LABEL).to_numpy(zero_copy_only=False),
            feature_names=self._features,
        )
        self._at += 1
        return True

    def reset(self) -> None:
        self._at = 0


def _matrix(
    batches: list[pa.RecordBatch],
    features: list[str],
    params: Mapping[str, Any],
    ref: xgboost.QuantileDMatrix | None = None,
) -> xgboost.QuantileDMatrix:
    settings: dict[str, Any] = {"missing": np.nan, "nthread": params["nthread"], "ref": ref}
    if "max_bin" in params:
        settings["max_bin"] = params["max_bin"]
    batches = [b for b in batches if b.num_rows]
    if not batches:  # every worker must build its matrix: XGBoost syncs while building
        empty = np.empty((0, len(features)), dtype=np.float32)
        return xgboost.QuantileDMatrix(empty, feature_names=features, **settings)
    return xgboost.QuantileDMatrix(_Batches(batches, features), **settings)


def _train_task(
    batches: Iterator[pa.RecordBatch],
    *,
    features: list[str],
    params: dict[str, Any],
    rounds: int,
    early_stopping_rounds: int | None,
    has_validation: bool,
    collective: dict[str, Any] | None,
) -> Iterator[pa.RecordBatch]:
    """One worker: its rows into QuantileDMatrix (training, validation), then
    ``xgboost.train``; the first worker yields the booster."""
    train, valid = [], []
    for batch in batches:
        if has_validation:
            flag = batch.column(_VALID)
            train.append(batch.filter(pc.invert(flag)))
            valid.append(batch.filter(flag))
        else:
            train.append(batch)

    def fit() -> xgboost.Booster:
        dtrain = _matrix(train, features, params)
        evals = []
        if early_stopping_rounds:
            evals = [(_matrix(valid, features, params, ref=dtrain), "validation")]
        train.clear()
        valid.clear()
        return xgboost.train(
            params,
            dtrain,
            num_boost_round=rounds,
            evals=evals,
            early_stopping_rounds=early_stopping_rounds,
            verbose_eval=False,
        )

    if collective is None:
        booster, first = fit(), True
    else:
        from pyspark import BarrierTaskContext
        from xgboost.collective import CommunicatorContext

        task = BarrierTaskContext.get().partitionId()
        with CommunicatorContext(dmlc_task_id=str(task), **collective):
            booster = fit()
        first = task == 0
    if first:
        raw = bytes(booster.save_raw("ubj"))
        yield pa.RecordBatch.from_pydict({"booster": pa.array([raw], pa.binary())})


# -- the estimator ----------------------------------------------------------------------


def _positive(name: str, minimum: int) -> Any:
    return integer_at_least("BoosterClassifier", name, minimum)


def _to_params(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(
            "The 'xgboostParams' parameter of BoosterClassifier must be a mapping of "
            f"XGBClassifier parameter names to values. Got {value!r} instead."
        )
    known = set(xgboost_param_names())
    for key in value:
        if key in MANAGED_PARAMS:
            raise ValueError(
                f"The 'xgboostParams' parameter of BoosterClassifier cannot set '{key}': "
                f"{MANAGED_PARAMS[key]}."
            )
        if key not in known:
            raise ValueError(
                f"The 'xgboostParams' parameter of BoosterClassifier got '{key}', which is "
                "not a parameter of XGBClassifier."
            )
    return dict(value)


class BoosterClassifier(Estimator, DefaultParamsReadable, DefaultParamsWritable):
    """A binary XGBoost classifier trained by ``xgboost.train`` in ``numWorkers`` Spark tasks
    (see the module docs); fitting gives a :class:`BoosterScore`.

    ``validationCol`` (boolean, optional) flags the rows early stopping evaluates
    (``earlyStoppingRounds`` > 0); without early stopping those rows are not used.

    Examples
    --------
    >>> estimator = BoosterClassifier(featureCols=["age", "visits"], numWorkers=2,
    ...                               xgboostParams={"n_estimators": 50, "max_depth": 4})
    >>> estimator.getNumWorkers(), estimator.getXgboostParams()["max_depth"]
    (2, 4)
    """

    featureCols: Param[list[str]] = Param(
        Params._dummy(), "featureCols", "feature columns", TypeConverters.toListString
    )
    labelCol: Param[str] = Param(
        Params._dummy(), "labelCol", "label column (0 or 1)", TypeConverters.toString
    )
    validationCol: Param[str] = Param(
        Params._dummy(),
        "validationCol",
        "boolean column flagging the early-stopping rows ('' for none)",
        TypeConverters.toString,
    )
    numWorkers: Param[int] = Param(
        Params._dummy(), "numWorkers", "XGBoost workers (Spark tasks)", _positive("numWorkers", 1)
    )
    nthread: Param[int] = Param(
        Params._dummy(), "nthread", "XGBoost threads per worker", _positive("nthread", 1)
    )
    earlyStoppingRounds: Param[int] = Param(
        Params._dummy(),
        "earlyStoppingRounds",
        "rounds without improvement on the validation rows before stopping (0: off)",
        _positive("earlyStoppingRounds", 0),
    )
    xgboostParams: Param[dict[str, Any]] = Param(
        Params._dummy(),
        "xgboostParams",
        "XGBClassifier parameters (n_estimators, learning_rate, max_depth, ...)",
        _to_params,
    )
    outputCol: Param[str] = Param(
        Params._dummy(), "outputCol", "score column of the fitted stage", TypeConverters.toString
    )

    @keyword_only
    def __init__(
        self,
        *,
        featureCols: list[str] | None = None,
        labelCol: str = "label",
        validationCol: str = "",
        numWorkers: int = 1,
        nthread: int = 1,
        earlyStoppingRounds: int = 0,
        xgboostParams: dict[str, Any] | None = None,
        outputCol: str = "score",
    ) -> None:
        super().__init__()
        self._setDefault(
            labelCol="label",
            validationCol="",
            numWorkers=1,
            nthread=1,
            earlyStoppingRounds=0,
            xgboostParams={},
            outputCol="score",
        )
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})  # type: ignore[attr-defined]

    def getFeatureCols(self) -> list[str]:
        return self.getOrDefault(self.featureCols)

    def getNumWorkers(self) -> int:
        return self.getOrDefault(self.numWorkers)

    def getXgboostParams(self) -> dict[str, Any]:
        params: dict[str, Any] = self.getOrDefault(self.xgboostParams)
        return dict(params)

    def _fit(self, dataset: DataFrame) -> BoosterScore:
        if not self.isDefined(self.featureCols):
            raise ValueError(
                "The 'featureCols' parameter of BoosterClassifier must be set. It is not set."
            )
        early = self.getOrDefault(self.earlyStoppingRounds)
        validation = self.getOrDefault(self.validationCol)
        rows = prepare_training_rows(
            dataset if early or not validation else dataset.where(~F.col(validation)),
            self.getFeatureCols(),
            self.getNumWorkers(),
            self.getOrDefault(self.labelCol),
            validation if early else None,
        )
        try:
            return fit_booster(
                rows,
                self.getXgboostParams(),
                nthread=self.getOrDefault(self.nthread),
                early_stopping_rounds=early,
                output_col=self.getOrDefault(self.outputCol),
            )
        finally:
            rows.release()
