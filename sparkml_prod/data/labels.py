"""Future-window labels, and the check that their data is complete.

Point-in-time rule of a label, for a spine row ``(entity, as_of)`` and a horizon ``h``:
the label looks at the source events with ``as_of <= event_time < as_of + h`` (an event
at exactly ``as_of`` belongs to the label, not to the features, which stop just before
it). ``kind`` is

* ``binary``: 1.0 when at least one event matches the filter in the horizon, else 0.0;
* ``count``: the number of matching events (0.0 when none);
* ``sum``: the sum of ``value_col`` over the matching events (0.0 when none).

The time split that keeps labels from leaking is :mod:`sparkml_prod.data.split`.

Instants follow the library's UTC rule (:mod:`sparkml_prod.core.time`): as-of values
given here may be dates (midnight UTC), naive datetimes (UTC) or aware ones; those
returned are naive UTC datetimes. Label windows are compared in epoch microseconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.errors import TrainingDataError
from sparkml_prod.core.tables import NUMERIC, read_table, require_columns
from sparkml_prod.core.time import (
    TIMESTAMP_TYPES,
    from_micros,
    micros,
    naive_utc,
    parse_window,
    prune_to,
    require_utc_session,
    spine_time_range,
)
from sparkml_prod.features.params import check_filters, exclude_null_keys

__all__ = [
    "LABEL_KINDS",
    "add_labels",
    "check_labels_complete",
    "labels_complete_until",
]

LABEL_KINDS = ("binary", "count", "sum")
MICROS_PER_DAY = 86_400_000_000


def _show(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d") if value.time() == dt.time() else value.isoformat(sep=" ")


def labels_complete_until(
    spark: SparkSession, source: str, timestamp_col: str, source_version: int | None = None
) -> dt.datetime:
    """The end of the source's complete data: midnight UTC after its last event.

    A daily-loaded event table is complete up to the end of the (UTC) day of its last
    event; a label window must end at or before this instant. Returned as a naive UTC
    datetime, computed from epoch microseconds (no OS zone). ``source_version``: the
    Delta version of the source to read (time travel), the latest when None.
    """
    events = read_table(spark, source, {timestamp_col: TIMESTAMP_TYPES}, source_version)
    last = events.agg(F.max(micros(timestamp_col))).head()
    if last is None or last[0] is None:
        raise TrainingDataError(f"Source '{source}' has no events: no label can be computed.")
    day_end = (last[0] // MICROS_PER_DAY + 1) * MICROS_PER_DAY
    return from_micros(day_end)


def check_labels_complete(
    as_of_dates: Sequence[dt.date], horizon: str, complete_until: dt.date, source: str
) -> None:
    """Refuse as-of dates whose label window ends after the data does.

    Dates, naive (UTC) and aware datetimes are accepted and compared as UTC instants.
    """
    h = dt.timedelta(microseconds=parse_window(horizon, owner="labels", param="horizon"))
    complete_until = naive_utc(complete_until)
    late = [a for a in map(naive_utc, as_of_dates) if a + h > complete_until]
    if late:
        raise TrainingDataError(
            f"Labels of as-of {', '.join(_show(a) for a in late)} are not complete yet: "
            f"horizon {horizon} needs events until {_show(max(late) + h)}, but source "
            f"'{source}' is complete only until {_show(complete_until)}. Use as-of dates "
            f"no later than {_show(complete_until - h)}."
        )


def add_labels(
    spine: DataFrame,
    source: str,
    *,
    horizon: str,
    event_filter: str | None = None,
    kind: str = "binary",
    value_col: str | None = None,
    label_col: str = "label",
    entity_col: str = "user_id",
    as_of_col: str = "as_of",
    source_entity_col: str | None = None,
    timestamp_col: str = "event_time",
    source_version: int | None = None,
) -> DataFrame:
    """The spine with a label column: what happens in ``[as_of, as_of + horizon)``.

    With ``source_version`` the source is read at that Delta version (time travel).

    Examples
    --------
    >>> labelled = add_labels(spine, "demo-output/tables/events", horizon="30d",  # doctest: +SKIP
    ...                       event_filter="event_type = 'purchase'")
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"Label kind must be one of {', '.join(LABEL_KINDS)}. Got {kind!r}.")
    if kind == "sum" and value_col is None:
        raise ValueError("A 'sum' label needs value_col, the column to add up.")
    if label_col in spine.columns:
        raise ValueError(f"The spine already has a column '{label_col}'; choose another label_col.")
    source_entity = source_entity_col or entity_col
    window = parse_window(horizon, owner="add_labels", param="horizon")
    require_utc_session(spine.sparkSession, "add_labels")
    require_columns(spine, {entity_col: (), as_of_col: TIMESTAMP_TYPES}, table="spine")
    required: dict[str, object] = {timestamp_col: TIMESTAMP_TYPES, source_entity: ()}
    if value_col is not None and kind == "sum":
        required[value_col] = NUMERIC
    spark = spine.sparkSession
    events = read_table(spark, source, required, source_version)  # type: ignore[arg-type]
    if event_filter:
        check_filters(events, {"label": event_filter}, source, "add_labels")
    lowest, highest = spine_time_range(spine, as_of_col)
    events = exclude_null_keys(events, source_entity, timestamp_col, source, "add_labels")
    if lowest is None or highest is None:
        events = events.where(F.lit(False))
    else:
        events = prune_to(events, timestamp_col, lowest, highest + window)
    if event_filter:
        events = events.where(F.coalesce(F.expr(event_filter), F.lit(False)))
    value = F.col(value_col).cast("double") if value_col and kind == "sum" else F.lit(1.0)
    events = events.select(
        F.col(source_entity).alias("__e"), micros(timestamp_col).alias("__t"), value.alias("__v")
    )
    keys = (
        spine.select(F.col(entity_col).alias("__e"), micros(as_of_col).alias("__a"))
        .where(F.col("__e").isNotNull() & F.col("__a").isNotNull())
        .distinct()
    )
    matched = events.join(
        keys,
        (events["__e"] == keys["__e"])
        & (events["__t"] >= keys["__a"])
        & (events["__t"] < keys["__a"] + F.lit(window)),
    )
    total = F.sum("__v") if kind == "sum" else F.count(F.lit(1))
    per_key = matched.groupBy(keys["__e"], keys["__a"]).agg(total.cast("double").alias("__y"))
    joined = spine.alias("s").join(
        per_key.alias("k"),
        (F.col(f"s.`{entity_col}`") == F.col("k.__e"))
        & (micros(F.col(f"s.`{as_of_col}`")) == F.col("k.__a")),
        "left",
    )
    found = F.coalesce(F.col("k.__y"), F.lit(0.0))
    label = F.when(found > 0, 1.0).otherwise(0.0) if kind == "binary" else found
    known = F.col(f"s.`{entity_col}`").isNotNull() & F.col(f"s.`{as_of_col}`").isNotNull()
    return joined.select("s.*", F.when(known, label).alias(label_col))
