"""``WindowAggregates``: many windows x many aggregations of a source, in one pass.

Point-in-time semantics, for a spine row ``(entity, as_of)`` and a window ``w``: the
aggregate covers the source rows of that entity with ``as_of - w <= event_time < as_of``.
An event at exactly ``as_of`` is not seen. With no event in the window, counts, distinct
counts and sums are 0; mean, min, max and stddev are null (missing, which XGBoost handles
natively). ``stddev`` is the sample standard deviation: null below two events.
A spine row with a null entity or as-of is kept, with every feature null (unknown).

Output names (stable across releases), for window ``7d`` and an optional filter named
``purchase``:

==============================================  ======================================
aggregation                                     column
==============================================  ======================================
``{agg: count}``                                ``event_count_7d``
``{agg: count, filter: purchase}``              ``purchase_count_7d``
``{agg: count, by: event_type, values: [a]}``   ``event_type_a_count_7d``
``{agg: sum, column: amount}``                  ``amount_sum_7d``
``{agg: sum, column: amount, filter: purchase}``  ``amount_sum_purchase_7d``
``{agg: count_distinct, column: session_id}``   ``session_id_count_distinct_7d``
==============================================  ======================================

``agg`` is one of count, sum, mean, min, max, stddev, count_distinct; ``column`` is
required except for a plain count (``{agg: count, column: c}`` counts non-null ``c``).
``by``/``values`` split an aggregation per value of a low-cardinality column
(``{by}_{value}`` joins the column part of the name; values are lower-cased, each run
of other characters than a-z and 0-9 becomes one ``_``, and leading or trailing ``_``
are dropped: ``"Home & Garden"`` -> ``home_garden``). A count split by value and
restricted by a filter is ``{by}_{value}_{filter}_count_{w}``. ``outputPrefix`` is
prepended to every name.

The plan (chosen by measurement, see ``bench/features.py``): the source is pruned to
``[min(as_of) - max(window), max(as_of))`` with literal bounds (so Delta skips files),
shuffled ONCE by entity, range-joined to the distinct ``(entity, as_of)`` keys (each event
meets only the as-of dates whose longest window covers it), and aggregated per key with
conditional aggregates. Exact distinct counts use no ``countDistinct`` (whose Expand
multiplies the shuffled rows): a window function over the entity-partitioned source
gives each event the time of the next event with the same value, and an event counts
for as-of ``t`` when it is the last occurrence of its value before ``t``. Everything
after the one shuffle stays in the entity partitioning: no further exchange of events.

The rows that the range join multiplies (about three per event for monthly snapshots and
a 90-day window) are kept narrow and cheap to test: filters become booleans and split
columns (``by``) a small integer code per event before the shuffle, and each distinct
variant one long ("counted for as-of ``a`` when >= ``a``"), after which the value strings
are dropped. Measured at 20M events and 6 snapshots: 28.2 s with string comparisons per
aggregate, 21.6 s with the codes, 16.7 s (best of 4) with the strings also dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from sparkml_prod.core.tables import NUMERIC, sql_literal
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

__all__ = ["WindowAggregates", "AGGREGATIONS"]

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "stddev", "count_distinct")
_ZERO_WHEN_EMPTY = ("count", "sum", "count_distinct")
_LATEST, _EARLIEST = 2**63 - 1, -(2**63)  # bounds of a long, as literals
_SPEC_KEYS = ("agg", "column", "filter", "by", "values")


def _fail(detail: str, got: Any) -> ValueError:
    return ValueError(
        "The 'aggregations' parameter of WindowAggregates must be a list of mappings with "
        f"keys {', '.join(_SPEC_KEYS)}: {detail}. Got {got!r} instead."
    )


def to_aggregations(value: Any) -> list[dict[str, Any]]:
    """Type converter of ``aggregations``: checked, normalised, JSON-safe specs."""
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail("a non-empty list", value)
    specs = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) - set(_SPEC_KEYS) or "agg" not in item:
            raise _fail("each with 'agg' and no other keys", item)
        agg, column = item["agg"], item.get("column")
        if agg not in AGGREGATIONS:
            raise _fail(f"'agg' one of {', '.join(AGGREGATIONS)}", item)
        if column is None and agg != "count":
            raise _fail(f"'column' for agg {agg}", item)
        for key in ("column", "filter", "by"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise _fail(f"'{key}' a string", item)
        values = item.get("values")
        if (item.get("by") is None) != (values is None):
            raise _fail("'by' and 'values' together", item)
        if values is not None and (
            not isinstance(values, (list, tuple))
            or not values
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)
        ):
            raise _fail("'values' a non-empty list of strings or integers", item)
        spec = {
            "agg": agg,
            "column": column,
            "filter": item.get("filter"),
            "by": item.get("by"),
            "values": list(values) if values is not None else None,
        }
        specs.append(spec)
    return specs


def to_windows(value: Any) -> list[str]:
    windows = TypeConverters.toListString(value)
    if not windows:
        raise ValueError("The 'windows' parameter of WindowAggregates must not be empty.")
    for window in windows:
        parse_window(window)
    if len(set(windows)) != len(windows):
        raise ValueError(
            "The 'windows' parameter of WindowAggregates must not repeat a window. "
            f"Got {windows!r} instead."
        )
    return windows


def _slug(value: object) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(value).lower()).strip("_")


class WindowAggregates(
    Transformer,
    HasSpineKeys,
    HasSource,
    HasFilters,
    HasOutputPrefix,
    DefaultParamsReadable,
    DefaultParamsWritable,
):
    """Point-in-time aggregates of a source over many windows, in one aggregation.

    Examples
    --------
    >>> stage = WindowAggregates(
    ...     sourceTable="demo-output/tables/events",
    ...     windows=["7d", "30d"],
    ...     filters={"purchase": "event_type = 'purchase'"},
    ...     aggregations=[{"agg": "count"},
    ...                   {"agg": "sum", "column": "amount", "filter": "purchase"},
    ...                   {"agg": "count_distinct", "column": "session_id"}])
    >>> stage.outputColumns()[:3]
    ['event_count_7d', 'event_count_30d', 'amount_sum_purchase_7d']
    >>> features = stage.transform(spine)  # doctest: +SKIP
    """

    windows: Param[list[str]] = Param(
        Params._dummy(), "windows", "windows such as 7d, 12h, 2w", to_windows
    )
    aggregations: Param[list[dict[str, Any]]] = Param(
        Params._dummy(), "aggregations", "aggregation specs (see module docs)", to_aggregations
    )

    @keyword_only
    def __init__(
        self,
        *,
        sourceTable: str | None = None,
        windows: list[str] | None = None,
        aggregations: list[dict[str, Any]] | None = None,
        filters: dict[str, str] | None = None,
        entityCol: str = "user_id",
        asOfCol: str = "as_of",
        sourceEntityCol: str | None = None,
        timestampCol: str = "event_time",
        outputPrefix: str = "",
        sourceVersion: int | None = None,
    ) -> None:
        super().__init__()
        self._setDefault(windows=["7d", "30d", "90d"], aggregations=[{"agg": "count"}])
        self.setParams(**self._input_kwargs)  # type: ignore[attr-defined]

    @keyword_only
    def setParams(self, **kwargs: Any) -> WindowAggregates:
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def setWindows(self, value: list[str]) -> WindowAggregates:
        return self._set(windows=value)

    def setAggregations(self, value: list[dict[str, Any]]) -> WindowAggregates:
        return self._set(aggregations=value)

    def getWindows(self) -> list[str]:
        return self.getOrDefault(self.windows)

    def getAggregations(self) -> list[dict[str, Any]]:
        return self.getOrDefault(self.aggregations)

    # -- naming -----------------------------------------------------------------------

    def _variants(self) -> list[tuple[dict[str, Any], object | None]]:
        """Each aggregation spec paired with each of its split values (or None)."""
        out: list[tuple[dict[str, Any], object | None]] = []
        for spec in self.getAggregations():
            for value in spec["values"] or [None]:
                out.append((spec, value))
        return out

    def _name(self, spec: dict[str, Any], value: object | None, window: str) -> str:
        split = f"{spec['by']}_{_slug(value)}" if spec["by"] is not None else None
        parts: list[str]
        if spec["agg"] == "count" and spec["column"] is None:
            subject = split or spec["filter"] or "event"
            parts = [subject, "count"]
            if split and spec["filter"]:
                parts = [split, spec["filter"], "count"]
        else:
            parts = [
                spec["column"],
                *([split] if split else []),
                spec["agg"],
                *([spec["filter"]] if spec["filter"] else []),
            ]
        return self.getOutputPrefix() + "_".join([*parts, window])

    def outputColumns(self) -> list[str]:
        """The feature columns this stage adds, in output order."""
        self._validate()
        return [self._name(s, v, w) for s, v in self._variants() for w in self.getWindows()]

    def _validate(self) -> None:
        filters = self.getFilters()
        for spec in self.getAggregations():
            if spec["filter"] is not None and spec["filter"] not in filters:
                raise ValueError(
                    f"The 'aggregations' parameter of WindowAggregates names filter "
                    f"'{spec['filter']}', which is not in 'filters' "
                    f"({', '.join(sorted(filters)) or 'none defined'})."
                )
        names = [self._name(s, v, w) for s, v in self._variants() for w in self.getWindows()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                "The 'aggregations' parameter of WindowAggregates gives the same output "
                f"column more than once: {', '.join(repeated)}."
            )

    # -- transform --------------------------------------------------------------------

    def _transform(self, spine: DataFrame) -> DataFrame:
        owner = "WindowAggregates"
        self._validate()
        ref = require_source_param(self)
        entity, as_of = self.getEntityCol(), self.getAsOfCol()
        source_entity, timestamp = self.getSourceEntityCol(), self.getTimestampCol()
        check_spine(spine, entity, as_of, owner)
        outputs = self.outputColumns()
        check_outputs_are_new(spine, outputs, owner)

        specs, filters = self.getAggregations(), self.getFilters()
        typed = {
            s["column"]: NUMERIC
            for s in specs
            if s["column"] and s["agg"] not in ("count", "count_distinct")
        }
        other = {s["column"]: () for s in specs if s["column"] and s["column"] not in typed}
        other.update({s["by"]: () for s in specs if s["by"]})
        source = read_source(
            spine.sparkSession,
            ref,
            source_entity,
            timestamp,
            {**other, **typed},
            owner,
            version=self.getSourceVersion(),
        )
        check_filters(source, filters, ref, owner)

        windows = {w: parse_window(w) for w in self.getWindows()}
        longest = max(windows.values())
        lowest, highest = spine_time_range(spine, as_of)
        source = exclude_null_keys(source, source_entity, timestamp, ref, owner)
        if lowest is None or highest is None:
            source = source.where(F.lit(False))
        else:
            source = prune_to(source, timestamp, lowest - longest, highest)

        used_filters = sorted({s["filter"] for s in specs if s["filter"]})
        value_columns = sorted({s["column"] for s in specs if s["column"]})
        events = source.select(
            F.col(source_entity).alias("__e"),
            micros(timestamp).alias("__t"),
            *[F.col(c).alias(f"__v_{c}") for c in value_columns],
            *[F.coalesce(F.expr(filters[f]), F.lit(False)).alias(f"__f_{f}") for f in used_filters],
            *[F.expr(code).alias(f"__b_{by}") for by, code in self._split_codes().items()],
        ).repartition("__e")
        events = self._add_next_occurrences(events, specs)

        keys = spine_keys(spine, entity, as_of)
        joined = events.join(
            keys,
            (events["__e"] == keys["__e"])
            & (events["__t"] < keys["__a"])
            & (events["__t"] >= keys["__a"] - F.lit(longest)),
        ).select(events["*"], keys["__a"])

        aggregates = [
            F.expr(f"{self._aggregate(spec, value, windows[w])} AS `{self._name(spec, value, w)}`")
            for spec, value in self._variants()
            for w in self.getWindows()
        ]
        features = joined.groupBy("__e", "__a").agg(*aggregates)

        zero_when_empty = {
            self._name(s, v, w)
            for s, v in self._variants()
            for w in self.getWindows()
            if s["agg"] in _ZERO_WHEN_EMPTY
        }
        columns = [
            F.expr(
                "CASE WHEN `__e` IS NOT NULL AND `__a` IS NOT NULL "
                f"THEN coalesce(`{n}`, 0) END AS `{n}`"
            )
            if n in zero_when_empty
            else F.col(n)
            for n in outputs
        ]
        return join_to_spine(spine, entity, as_of, features, columns)

    def _condition(self, spec: dict[str, Any], value: object | None) -> str:
        """SQL condition of a spec's filter and split value (plain SQL: one JVM call each)."""
        parts = ["true"]
        if spec["filter"]:
            parts.append(f"`__f_{spec['filter']}`")
        if spec["by"] is not None:
            parts.append(f"`__b_{spec['by']}` = {self._split_values()[spec['by']].index(value)}")
        return " AND ".join(parts)

    def _split_values(self) -> dict[str, list[object]]:
        """Each ``by`` column's values, in order of first appearance in the specs."""
        out: dict[str, list[object]] = {}
        for spec in self.getAggregations():
            if spec["by"] is not None:
                known = out.setdefault(spec["by"], [])
                known.extend(v for v in spec["values"] if v not in known)
        return out

    def _split_codes(self) -> dict[str, str]:
        """Per ``by`` column, SQL for the index of its value in ``_split_values`` (null for
        other values). Computed once per event before the shuffle, so the events carry a
        small integer instead of the string, and each split condition compares integers."""
        return {
            by: "CASE "
            + " ".join(f"WHEN `{by}` = {sql_literal(v)} THEN {i}" for i, v in enumerate(values))
            + " END"
            for by, values in self._split_values().items()
        }

    def _distinct_variants(
        self, specs: Sequence[dict[str, Any]]
    ) -> list[tuple[str, str | None, str | None, object | None]]:
        out = []
        for spec in specs:
            if spec["agg"] != "count_distinct":
                continue
            for value in spec["values"] or [None]:
                key = (spec["column"], spec["filter"], spec["by"], value)
                if key not in out:
                    out.append(key)
        return out

    def _next_name(self, column: str, flt: str | None, by: str | None, value: object | None) -> str:
        index = self._distinct_variants(self.getAggregations()).index((column, flt, by, value))
        return f"__next_{index}"

    def _add_next_occurrences(
        self, events: DataFrame, specs: Sequence[dict[str, Any]]
    ) -> DataFrame:
        """For each distinct-count variant: time of the next event with the same value,
        folded with the variant's condition into one long (see below).

        Ordered latest first, the running minimum over the rows before the current one
        is the next occurrence's time; one sort per distinct column, all variants of a
        column share it, and the entity partitioning of ``events`` needs no new shuffle.
        """
        next_times, last_for = {}, {}
        for column, flt, by, value in self._distinct_variants(specs):
            name = self._next_name(column, flt, by, value)
            condition = self._condition({"filter": flt, "by": by}, value)
            window = (
                Window.partitionBy("__e", f"__v_{column}")
                .orderBy(F.col("__t").desc())
                .rowsBetween(Window.unboundedPreceding, -1)
            )
            next_times[name] = F.min(F.when(F.expr(condition), F.col("__t"))).over(window)
            # Then one long per variant, "counted for an as-of a when >= a": the next
            # occurrence's time (none: the largest long) for an event with its value set
            # that passes the variant's condition, the smallest long for any other event.
            qualifies = F.expr(f"{condition} AND `__v_{column}` IS NOT NULL")
            last_for[name] = F.when(qualifies, F.coalesce(F.col(name), F.lit(_LATEST))).otherwise(
                F.lit(_EARLIEST)
            )
        if not next_times:
            return events
        # One withColumns: variants over the same column share one Window operator.
        events = events.withColumns(next_times).withColumns(last_for)
        # The value strings are dropped, so the rows that the join multiplies stay narrow.
        still_used = {s["column"] for s in specs if s["agg"] != "count_distinct" and s["column"]}
        dropped = {f"__v_{s['column']}" for s in specs if s["agg"] == "count_distinct"}
        return events.drop(*(dropped - {f"__v_{c}" for c in still_used}))

    def _aggregate(self, spec: dict[str, Any], value: object | None, window_micros: int) -> str:
        """The conditional aggregate of one spec, split value and window, as SQL."""
        in_window = f"`__t` >= `__a` - {window_micros} AND {self._condition(spec, value)}"
        agg, column = spec["agg"], spec["column"]
        if agg == "count_distinct":
            # The event is the last one with its (set) value before as-of: see
            # _add_next_occurrences.
            last_for = self._next_name(column, spec["filter"], spec["by"], value)
            window_only = f"`__t` >= `__a` - {window_micros}"
            return f"count(CASE WHEN {window_only} AND `{last_for}` >= `__a` THEN 1 END)"
        if column is None:
            return f"count(CASE WHEN {in_window} THEN 1 END)"
        function = {"mean": "avg", "stddev": "stddev_samp"}.get(agg, agg)
        return f"{function}(CASE WHEN {in_window} THEN `__v_{column}` END)"
