"""``DerivedColumns``: named Spark SQL expressions over the columns of earlier stages.

Ratios and derived features of the YAML spec (``try_divide(a, b)``, any expression) are
one stage that *declares* its outputs, so the model card can list exactly the features a
model needs (pyspark's ``SQLTransformer`` hides them inside a statement).
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_prod.features.params import check_outputs_are_new, to_identifier

__all__ = ["DerivedColumns"]


def _to_expressions(value: Any) -> dict[str, str]:
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value.values())
    ):
        raise TypeError(
            "The 'expressions' parameter of DerivedColumns must be a non-empty mapping of "
            "output names to Spark SQL expressions, e.g. {'trend': 'try_divide(a, b)'}. "
            f"Got {value!r} instead."
        )
    for name in value:
        to_identifier(name, "DerivedColumns", "expressions")
    return dict(value)


class DerivedColumns(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Adds one column per named Spark SQL expression, evaluated on each row.

    Examples
    --------
    >>> stage = DerivedColumns(expressions={"share": "try_divide(a, b)"})
    >>> stage.outputColumns()
    ['share']
    """

    expressions: Param[dict[str, str]] = Param(
        Params._dummy(), "expressions", "output name -> Spark SQL expression", _to_expressions
    )

    @keyword_only
    def __init__(self, *, expressions: dict[str, str] | None = None) -> None:
        super().__init__()
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})  # type: ignore[attr-defined]

    def getExpressions(self) -> dict[str, str]:
        if not self.isDefined(self.expressions):
            raise ValueError(
                "The 'expressions' parameter of DerivedColumns must be set to a mapping of "
                "output names to Spark SQL expressions. It is not set."
            )
        return self.getOrDefault(self.expressions)

    def outputColumns(self) -> list[str]:
        """The columns this stage adds, in order."""
        return list(self.getExpressions())

    def _transform(self, dataset: DataFrame) -> DataFrame:
        check_outputs_are_new(dataset, self.outputColumns(), "DerivedColumns")
        return dataset.withColumns(
            {name: F.expr(expression) for name, expression in self.getExpressions().items()}
        )
