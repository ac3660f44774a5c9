"""``PointInTimeLookup``: slowly changing attributes as they were before as-of.

For a spine row ``(entity, as_of)`` the stage attaches the attribute columns of the
latest source row of that entity with ``valid_from < as_of`` (a row valid from exactly
as-of is not yet seen); null when there is none. Ties on ``valid_from`` are broken by
the attribute values, so the result is deterministic.

Plan: like :class:`~sparkml_prod.features.Recency`, keys and attribute rows are unioned
and sorted once per entity by time; the last attribute row before each key is carried
forward, so snapshots do not multiply the source.
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from sparkml_prod.core.time import micros
from sparkml_prod.features.params import (
    HasOutputPrefix,
    HasSource,
    HasSpineKeys,
    check_outputs_are_new,
    check_spine,
    exclude_null_keys,
    join_to_spine,
    read_source,
    require_source_param,
    spine_keys,
)

__all__ = ["PointInTimeLookup"]


def _to_columns(value: Any) -> list[str]:
    columns = TypeConverters.toListString(value)
    if not columns:
        raise ValueError("The 'attributeCols' parameter of PointInTimeLookup must not be empty.")
    return columns


class PointInTimeLookup(
    Transformer,
    HasSpineKeys,
    HasSource,
    HasOutputPrefix,
    DefaultParamsReadable,
    DefaultParamsWritable,
):
    """Attach the attributes valid just before as-of from a table with ``valid_from``.

    Examples
    --------
    >>> stage = PointInTimeLookup(sourceTable="demo-output/tables/user_attributes",
    ...                           attributeCols=["plan", "country"], outputPrefix="attr_")
    >>> stage.outputColumns()
    ['attr_plan', 'attr_country']
    """

    attributeCols: Param[list[str]] = Param(
        Params._dummy(), "attributeCols", "attribute columns to attach", _to_columns
    )

    @keyword_only
    def __init__(
        self,
        *,
        sourceTable: str | None = None,
        attributeCols: list[str] | None = None,
        entityCol: str = "user_id",
        asOfCol: str = "as_of",
        sourceEntityCol: str | None = None,
        timestampCol: str = "valid_from",
        outputPrefix: str = "",
        sourceVersion: int | None = None,
    ) -> None:
        super().__init__()
        self._setDefault(timestampCol="valid_from")
        self.setParams(**self._input_kwargs)  # type: ignore[attr-defined]

    @keyword_only
    def setParams(self, **kwargs: Any) -> PointInTimeLookup:
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def getAttributeCols(self) -> list[str]:
        if not self.isDefined(self.attributeCols):
            raise ValueError(
                "The 'attributeCols' parameter of PointInTimeLookup must be set to the "
                "attribute columns to attach. It is not set."
            )
        return self.getOrDefault(self.attributeCols)

    def outputColumns(self) -> list[str]:
        prefix = self.getOutputPrefix()
        return [prefix + c for c in self.getAttributeCols()]

    def _transform(self, spine: DataFrame) -> DataFrame:
        owner = "PointInTimeLookup"
        ref = require_source_param(self)
        entity, as_of = self.getEntityCol(), self.getAsOfCol()
        source_entity, valid_from = self.getSourceEntityCol(), self.getTimestampCol()
        attributes = self.getAttributeCols()
        check_spine(spine, entity, as_of, owner)
        check_outputs_are_new(spine, self.outputColumns(), owner)
        source = read_source(
            spine.sparkSession,
            ref,
            source_entity,
            valid_from,
            {c: () for c in attributes},
            owner,
            version=self.getSourceVersion(),
        )
        source = exclude_null_keys(source, source_entity, valid_from, ref, owner)
        state = F.struct(*[F.col(c).alias(c) for c in attributes])
        rows = source.select(
            F.col(source_entity).alias("__e"),
            (micros(valid_from) * 2 + 1).alias("__k"),
            state.alias("__s"),
        )
        keys = spine_keys(spine, entity, as_of, time_name="__t").select(
            "__e",
            (F.col("__t") * 2).alias("__k"),
            F.lit(None).cast(rows.schema["__s"].dataType).alias("__s"),
        )
        # Keys sort before attribute rows valid from the same instant: those are not seen.
        ordered = (
            Window.partitionBy("__e")
            .orderBy("__k", *[F.col("__s").getField(c) for c in attributes])
            .rowsBetween(Window.unboundedPreceding, Window.currentRow)
        )
        found = (
            rows.unionByName(keys)
            .select("__e", "__k", F.last("__s", ignorenulls=True).over(ordered).alias("__found"))
            .where(F.col("__k") % 2 == 0)
            .select("__e", (F.col("__k") / 2).cast("long").alias("__a"), "__found")
        )
        prefix = self.getOutputPrefix()
        outputs = [F.col("__found").getField(c).alias(prefix + c) for c in attributes]
        return join_to_spine(spine, entity, as_of, found, outputs)
