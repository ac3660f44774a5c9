"""Small stages that turn a classifier's output into what jobs write: a score column."""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

__all__ = ["ProbabilityScore"]


class ProbabilityScore(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Adds ``outputCol``: the class-1 probability of a classifier as a plain double.

    Classifiers give a probability *vector*; tables, metrics and thresholds want one
    number per row. Runs in the JVM (no Python UDF).

    Examples
    --------
    >>> ProbabilityScore(inputCol="probability", outputCol="score").getOutputCol()
    'score'
    """

    inputCol: Param[str] = Param(
        Params._dummy(), "inputCol", "probability vector column", TypeConverters.toString
    )
    outputCol: Param[str] = Param(
        Params._dummy(), "outputCol", "score column (class-1 probability)", TypeConverters.toString
    )

    @keyword_only
    def __init__(self, *, inputCol: str = "probability", outputCol: str = "score") -> None:
        super().__init__()
        self._setDefault(inputCol="probability", outputCol="score")
        self._set(**self._input_kwargs)  # type: ignore[attr-defined]

    def getInputCol(self) -> str:
        return self.getOrDefault(self.inputCol)

    def getOutputCol(self) -> str:
        return self.getOrDefault(self.outputCol)

    def _transform(self, dataset: DataFrame) -> Any:
        probability = vector_to_array(F.col(self.getInputCol()))
        return dataset.withColumn(self.getOutputCol(), probability.getItem(1))
