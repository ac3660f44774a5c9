"""``BoosterScore``: a trained XGBoost booster's class-1 probability, scored in Arrow batches.

xgboost.spark's model stage needs a ``VectorAssembler`` and builds a Python list and a
vector per row; this stage hands whole Arrow batches of the feature columns to
``Booster.inplace_predict`` through a scalar Arrow UDF: no vector, no per-row Python
object, and only the feature columns cross to Python. The scores are those of
``booster.inplace_predict(X, iteration_range=(0, numTrees))`` on the same rows, bit for
bit (float32, widened to double).

Per ``transform`` the booster's bytes are broadcast once; each task loads one Booster
and predicts on ``batchRows`` rows at a time (whole Arrow batches, accumulated). A
feature may be any numeric or boolean column; null and NaN are both missing, as in
training with ``missing=NaN``.

Saved inside a ``PipelineModel``: the Params as the stage's metadata, and the booster as
``<stage path>/booster.ubj`` (XGBoost's UBJSON model format) through Hadoop's
FileSystem, so any path Spark can write (local, ``hdfs://``, ``s3a://``) works.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import xgboost
from pyspark import keyword_only
from pyspark.broadcast import Broadcast
from pyspark.ml import Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType

from sparkml_prod.core.errors import ModelIntegrityError, SchemaError
from sparkml_prod.core.tables import NUMERIC, require_columns
from sparkml_prod.registry.storage import Storage

__all__ = ["BoosterScore", "BOOSTER_FILE"]

#: The booster's file under the stage's saved path.
BOOSTER_FILE = "booster.ubj"
# What a feature column may be: XGBoost reads booleans as 0/1.
_FEATURE_TYPES = (*NUMERIC, "boolean")
_OBJECTIVE = "binary:logistic"


def integer_at_least(owner: str, name: str, minimum: int) -> Any:
    """A Param type converter: an integer (not a bool) of at least ``minimum``; the error
    names the stage ``owner`` and the Param ``name``."""

    def convert(value: Any) -> int:
        try:
            number = None if isinstance(value, bool) else TypeConverters.toInt(value)
        except TypeError:  # a string, 1.5
            number = None
        if number is None or number < minimum:
            raise ValueError(
                f"The '{name}' parameter of {owner} must be an integer of at least {minimum}. "
                f"Got {value!r} instead."
            )
        return number

    return convert


def _at_least_one(name: str) -> Any:
    return integer_at_least("BoosterScore", name, 1)


def _to_feature_cols(value: Any) -> list[str]:
    names = list(value) if isinstance(value, (list, tuple)) else None
    if (
        not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise ValueError(
            "The 'featureCols' parameter of BoosterScore must be a non-empty list of "
            f"distinct column names, in the booster's feature order. Got {value!r} instead."
        )
    return names


class BoosterScore(Model, MLReadable["BoosterScore"], MLWritable):
    """Adds ``outputCol``: the class-1 probability of a binary XGBoost booster.

    Build it from a trained booster with :meth:`from_booster`; ``numTrees`` is the number
    of boosting rounds to predict with (after early stopping: ``best_iteration + 1``, as
    xgboost.spark predicts). Each task holds up to ``batchRows`` rows of the feature
    columns in Python; the other columns stay in the JVM.

    Examples
    --------
    >>> import numpy as np, xgboost
    >>> x = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 0.0], [3.0, 1.0]])
    >>> booster = xgboost.train({"objective": "binary:logistic"},
    ...                         xgboost.DMatrix(x, label=[0, 0, 1, 1]), num_boost_round=3)
    >>> stage = BoosterScore.from_booster(booster, ["age", "visits"], num_trees=3)
    >>> stage.getFeatureCols(), stage.getNumTrees(), stage.getOutputCol()
    (['age', 'visits'], 3, 'score')
    """

    featureCols: Param[list[str]] = Param(
        Params._dummy(),
        "featureCols",
        "feature columns, in the booster's feature order",
        _to_feature_cols,
    )
    numTrees: Param[int] = Param(
        Params._dummy(),
        "numTrees",
        "boosting rounds to predict with: iteration_range=(0, numTrees)",
        _at_least_one("numTrees"),
    )
    outputCol: Param[str] = Param(
        Params._dummy(), "outputCol", "score column (class-1 probability)", TypeConverters.toString
    )
    nthread: Param[int] = Param(
        Params._dummy(), "nthread", "XGBoost threads per Spark task", _at_least_one("nthread")
    )
    batchRows: Param[int] = Param(
        Params._dummy(),
        "batchRows",
        "rows per inplace_predict call (whole Arrow batches, accumulated)",
        _at_least_one("batchRows"),
    )

    @keyword_only
    def __init__(
        self,
        *,
        featureCols: list[str] | None = None,
        numTrees: int | None = None,
        outputCol: str = "score",
        nthread: int = 1,
        batchRows: int = 100_000,
    ) -> None:
        super().__init__()
        self._raw: bytes | None = None
        self._shape: tuple[int, int] = (0, 0)  # the booster's (features, rounds)
        self._setDefault(outputCol="score", nthread=1, batchRows=100_000)
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})  # type: ignore[attr-defined]

    @classmethod
    def from_booster(
        cls,
        booster: xgboost.Booster,
        feature_cols: Sequence[str],
        num_trees: int,
        output_col: str = "score",
        nthread: int = 1,
        batch_rows: int = 100_000,
    ) -> BoosterScore:
        """The stage for a trained binary:logistic booster and its feature columns.

        Raises ValueError when the booster is not binary:logistic, has another number of
        features, names its features otherwise, or has fewer than ``num_trees`` rounds.
        """
        stage = cls(
            featureCols=list(feature_cols),
            numTrees=num_trees,
            outputCol=output_col,
            nthread=nthread,
            batchRows=batch_rows,
        )
        stage._set_raw(bytes(booster.save_raw("ubj")))
        named = booster.feature_names
        if named is not None and list(named) != stage.getFeatureCols():
            raise ValueError(
                f"The booster's features are named {list(named)} but feature_cols are "
                f"{stage.getFeatureCols()}: pass the columns in the booster's feature order."
            )
        stage._check_booster_fits()
        return stage

    def _set_raw(self, raw: bytes) -> None:
        booster = _load_booster(raw)
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        if objective != _OBJECTIVE:
            raise ValueError(
                f"BoosterScore scores binary classifiers (objective {_OBJECTIVE}); this "
                f"booster's objective is {objective}."
            )
        self._raw = raw
        self._shape = (booster.num_features(), booster.num_boosted_rounds())

    def _require_raw(self) -> bytes:
        if self._raw is None:
            raise ValueError(
                "BoosterScore has no booster: build it with BoosterScore.from_booster(booster, "
                "feature_cols, num_trees), or load a saved one."
            )
        return self._raw

    def _check_booster_fits(self) -> None:
        self._require_raw()
        for param in (self.featureCols, self.numTrees):
            if not self.isDefined(param):
                raise ValueError(
                    f"The '{param.name}' parameter of BoosterScore must be set. It is not set."
                )
        features, rounds = self._shape
        if len(self.getFeatureCols()) != features:
            raise ValueError(
                f"The 'featureCols' parameter of BoosterScore lists "
                f"{len(self.getFeatureCols())} columns but the booster has {features} "
                "features."
            )
        if self.getNumTrees() > rounds:
            raise ValueError(
                f"The 'numTrees' parameter of BoosterScore must be at most the booster's "
                f"{rounds} boosting rounds. Got {self.getNumTrees()} instead."
            )

    def getBooster(self) -> xgboost.Booster:
        """A new Booster loaded from this stage's model bytes."""
        return _load_booster(self._require_raw())

    def getFeatureCols(self) -> list[str]:
        return self.getOrDefault(self.featureCols)

    def getNumTrees(self) -> int:
        return self.getOrDefault(self.numTrees)

    def setNumTrees(self, value: int) -> BoosterScore:
        return self._set(numTrees=value)

    def getOutputCol(self) -> str:
        return self.getOrDefault(self.outputCol)

    def setOutputCol(self, value: str) -> BoosterScore:
        return self._set(outputCol=value)

    def getNthread(self) -> int:
        return self.getOrDefault(self.nthread)

    def setNthread(self, value: int) -> BoosterScore:
        return self._set(nthread=value)

    def getBatchRows(self) -> int:
        return self.getOrDefault(self.batchRows)

    def setBatchRows(self, value: int) -> BoosterScore:
        return self._set(batchRows=value)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_booster_fits()
        features, output = self.getFeatureCols(), self.getOutputCol()
        require_columns(
            dataset, dict.fromkeys(features, _FEATURE_TYPES), table="input of BoosterScore"
        )
        if output in dataset.columns:
            raise SchemaError(
                f"BoosterScore would add column '{output}' that its input already has; drop "
                "it from the input or set outputCol to another name."
            )
        score_task = partial(
            _score_batches,
            raw=dataset.sparkSession.sparkContext.broadcast(self._require_raw()),
            features=features,
            num_trees=self.getNumTrees(),
            nthread=self.getNthread(),
            batch_rows=self.getBatchRows(),
        )

        # A scalar Arrow UDF (an iterator of batches, so one booster per task): only the
        # feature columns travel to Python; the JVM keeps the others beside each score.
        @F.arrow_udf(DoubleType())  # type: ignore[call-overload]
        def score(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
            return score_task(batches)

        return dataset.withColumn(output, score(*[F.col(f"`{name}`") for name in features]))

    def write(self) -> MLWriter:
        return _BoosterScoreWriter(self)

    @classmethod
    def read(cls) -> MLReader[BoosterScore]:
        return _BoosterScoreReader()


def _load_booster(raw: bytes) -> xgboost.Booster:
    booster = xgboost.Booster()
    booster.load_model(bytearray(raw))
    return booster


# -- in the Spark tasks -----------------------------------------------------------------


def _score_batches(
    batches: Iterator[tuple[pa.Array, ...] | pa.Array],
    *,
    raw: Broadcast[bytes],
    features: list[str],
    num_trees: int,
    nthread: int,
    batch_rows: int,
) -> Iterator[pa.Array]:
    """One task: the scores of each input batch, predicted ``batch_rows`` rows at a time.

    Batches are never sliced (XGBoost reads an Arrow array's buffers from their start):
    a batch joins the pending ones unless that would pass ``batch_rows``. Scores come out
    in input order, as many as rows went in.
    """
    booster = _load_booster(raw.value)
    booster.set_param({"nthread": nthread})
    predict = partial(_scores, booster, features, num_trees)
    pending: list[tuple[pa.Array, ...]] = []
    rows = 0
    for given in batches:
        # A UDF of one column receives each batch as that column's array, not a tuple.
        batch = given if isinstance(given, tuple) else (given,)
        size = len(batch[0])
        if pending and rows + size > batch_rows:
            yield from predict(pending)
            pending, rows = [], 0
        pending.append(batch)
        rows += size
    if pending:
        yield from predict(pending)


def _scores(
    booster: xgboost.Booster,
    features: list[str],
    num_trees: int,
    batches: list[tuple[pa.Array, ...]],
) -> Iterator[pa.Array]:
    # inplace_predict takes an Arrow table (nulls are missing) of integer, float and
    # boolean columns, not decimals.
    columns = [
        _readable(pa.chunked_array([batch[i] for batch in batches], type=batches[0][i].type))
        for i in range(len(features))
    ]
    matrix = pa.Table.from_arrays(columns, names=features)
    if matrix.num_rows:
        scores = booster.inplace_predict(matrix, iteration_range=(0, num_trees), missing=np.nan)
        scores = scores.astype(np.float64)
    else:
        scores = np.empty(0, dtype=np.float64)
    start = 0
    for batch in batches:
        end = start + len(batch[0])
        yield pa.array(scores[start:end], type=pa.float64())
        start = end


def _readable(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(pa.float64()) if pa.types.is_decimal(column.type) else column


# -- persistence ------------------------------------------------------------------------


class _BoosterScoreWriter(MLWriter):
    """The Params as the stage's metadata, the booster beside it as ``booster.ubj``."""

    def __init__(self, instance: BoosterScore) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        raw = self.instance._require_raw()
        spark: SparkSession = self.sparkSession
        DefaultParamsWriter.saveMetadata(
            self.instance, path, spark, extraMetadata={"xgboostVersion": xgboost.__version__}
        )
        Storage(spark, path).write_bytes(f"{path.rstrip('/')}/{BOOSTER_FILE}", raw)


class _BoosterScoreReader(MLReader[BoosterScore]):
    def load(self, path: str) -> BoosterScore:
        spark: SparkSession = self.sparkSession
        metadata = DefaultParamsReader.loadMetadata(
            path, spark, expectedClassName=f"{BoosterScore.__module__}.BoosterScore"
        )
        location = f"{path.rstrip('/')}/{BOOSTER_FILE}"
        raw = Storage(spark, path).read_bytes(location)
        if raw is None:
            raise ModelIntegrityError(
                f"The saved BoosterScore at '{path}' has no booster file '{location}': the "
                "model was copied without it. Copy the whole model directory, or save it again."
            )
        stage = BoosterScore()
        stage._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(stage, metadata)
        stage._set_raw(raw)
        return stage
