"""``Recency``: days since the last and the first event before as-of.

For a spine row ``(entity, as_of)``: ``days_since_last_event`` is ``(as_of - t) / 1 day``
for the latest source event with ``event_time < as_of`` (an event at exactly as-of is
not seen), ``days_since_first_event`` the same for the earliest; both are fractional
and null when there is no such event. For each named filter ``f`` the stage adds
``days_since_last_{f}`` and ``days_since_first_{f}`` over the events matching it.

With ``lookback`` (e.g. ``"365d"``) only events with ``as_of - lookback <= event_time``
count, and the source is pruned to ``[min(as_of) - lookback, max(as_of))``; without it
the whole history before each as-of counts.

Plan: spine keys and events are unioned, sorted once per entity by time (keys before
events at the same instant) and running aggregates give each key the latest and
earliest earlier event, so work grows with events + keys, not events x snapshots.
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from sparkml_prod.core.time import micros, parse_window, prune_to, spine_time_range
from sparkml_prod.features.params import (
    HasFilters,
    HasOutputPrefix,
    HasSource,
    HasSpineKeys,
    check_filters,
    check_outputs_are_new,
    check_spine,
    exclude_null_keys,
    join_to_spine,
    read_source,
    require_source_param,
    spine_keys,
)

__all__ = ["Recency"]

_DAY_MICROS = 86_400_000_000.0


def _to_lookback(value: Any) -> str:
    text = TypeConverters.toString(value)
    if text:
        parse_window(text, owner="Recency", param="lookback")
    return text


class Recency(
    Transformer,
    HasSpineKeys,
    HasSource,
    HasFilters,
    HasOutputPrefix,
    DefaultParamsReadable,
    DefaultParamsWritable,
):
    """Days (fractional) since the last and the first event before as-of.

    Examples
    --------
    >>> stage = Recency(sourceTable="demo-output/tables/events",
    ...                 filters={"purchase": "event_type = 'purchase'"})
    >>> stage.outputColumns()  # doctest: +NORMALIZE_WHITESPACE
    ['days_since_last_event', 'days_since_first_event',
     'days_since_last_purchase', 'days_since_first_purchase']
    """

    lookback: Param[str] = Param(
        Params._dummy(),
        "lookback",
        "only events within this window count ('' = all history)",
        _to_lookback,
    )

    @keyword_only
    def __init__(
        self,
        *,
        sourceTable: str | None = None,
        filters: dict[str, str] | None = None,
        lookback: str = "",
        entityCol: str = "user_id",
        asOfCol: str = "as_of",
        sourceEntityCol: str | None = None,
        timestampCol: str = "event_time",
        outputPrefix: str = "",
        sourceVersion: int | None = None,
    ) -> None:
        super().__init__()
        self._setDefault(lookback="")
        self.setParams(**self._input_kwargs)  # type: ignore[attr-defined]

    @keyword_only
    def setParams(self, **kwargs: Any) -> Recency:
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def getLookback(self) -> str:
        return self.getOrDefault(self.lookback)

    def _subjects(self) -> list[tuple[str, str | None]]:
        return [("event", None), *[(name, cond) for name, cond in self.getFilters().items()]]

    def outputColumns(self) -> list[str]:
        prefix = self.getOutputPrefix()
        return [
            f"{prefix}days_since_{which}_{name}"
            for name, _ in self._subjects()
            for which in ("last", "first")
        ]

    def _transform(self, spine: DataFrame) -> DataFrame:
        owner = "Recency"
        ref = require_source_param(self)
        entity, as_of = self.getEntityCol(), self.getAsOfCol()
        source_entity, timestamp = self.getSourceEntityCol(), self.getTimestampCol()
        check_spine(spine, entity, as_of, owner)
        check_outputs_are_new(spine, self.outputColumns(), owner)
        version = self.getSourceVersion()
        source = read_source(spine.sparkSession, ref, source_entity, timestamp, {}, owner, version)
        check_filters(source, self.getFilters(), ref, owner)
        lookback = (
            parse_window(self.getLookback(), "Recency", "lookback") if self.getLookback() else None
        )

        lowest, highest = spine_time_range(spine, as_of)
        source = exclude_null_keys(source, source_entity, timestamp, ref, owner)
        if lowest is None or highest is None:
            source = source.where(F.lit(False))
        else:
            start = lowest - lookback if lookback is not None else None
            source = prune_to(source, timestamp, start, highest)

        flags = [
            (F.coalesce(F.expr(cond), F.lit(False)) if cond else F.lit(True)).alias(f"__f{i}")
            for i, (_, cond) in enumerate(self._subjects())
        ]
        # Sort key 2*t + kind: keys (kind 0) sort before events (kind 1) at the same time.
        events = source.select(
            F.col(source_entity).alias("__e"),
            (micros(timestamp) * 2 + 1).alias("__k"),
            micros(timestamp).alias("__t"),
            *flags,
        )
        keys = spine_keys(spine, entity, as_of, time_name="__t").select(
            "__e",
            (F.col("__t") * 2).alias("__k"),
            "__t",
            *[F.lit(None).cast("boolean").alias(f"__f{i}") for i in range(len(flags))],
        )
        ordered = Window.partitionBy("__e").orderBy("__k")
        running = ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        first_frame = ordered.rangeBetween(-2 * lookback, 0) if lookback is not None else running
        columns = []
        for i, _ in enumerate(self._subjects()):
            event_time = F.when(F.col(f"__f{i}"), F.col("__t"))
            columns += [
                F.max(event_time).over(running).alias(f"__last{i}"),
                F.min(event_time).over(first_frame).alias(f"__first{i}"),
            ]
        found = (
            events.unionByName(keys)
            .select("__e", "__k", "__t", *columns)
            .where(F.col("__k") % 2 == 0)
        )
        names = self.outputColumns()
        outputs: list[Column] = []
        for i, _ in enumerate(self._subjects()):
            for which in ("last", "first"):
                seen = F.col(f"__{which}{i}")
                if lookback is not None:
                    seen = F.when(seen >= F.col("__t") - F.lit(lookback), seen)
                outputs.append(
                    ((F.col("__t") - seen) / F.lit(_DAY_MICROS)).alias(names[len(outputs)])
                )
        found = found.select(F.col("__e"), F.col("__t").alias("__a"), *outputs)
        return join_to_spine(spine, entity, as_of, found, [F.col(n) for n in names])
