"""Time in the library: every instant is a UTC instant, held as microseconds since the epoch.

Point-in-time rules (see the feature and label modules) compare microseconds, never
wall-clock values, so neither the driver's OS time zone (``TZ``) nor Spark's session time
zone can move a window bound.

The UTC rule, on the Python side
--------------------------------
An as-of or any other instant given to the library may be

* a ``date``: midnight UTC at its start (what a date in a config means);
* a naive ``datetime``: read as UTC wall-clock time, never as the OS zone's;
* an aware ``datetime``: converted to UTC.

Instants the library returns (as-of schedules, :class:`~sparkml_prod.data.split.TimeSplit`,
``labels_complete_until``) are naive datetimes holding UTC, like the values configs give,
so they compare with each other and with config values (:func:`naive_utc`). Never call
``.timestamp()`` on a naive one: Python reads it in ``TZ``; use :func:`to_micros`.

The UTC rule, at the Spark boundary
-----------------------------------
pyspark converts a *naive* Python ``datetime`` through the OS zone in ``createDataFrame``
and ``F.lit``, and returns collected timestamps as naive datetimes in the OS zone. So the
library never hands Spark a Python datetime: an instant goes to Spark as epoch
microseconds (:func:`timestamp_lit`, or a ``long`` column turned into a timestamp with
``F.timestamp_micros``), and comes back as microseconds (:func:`micros`).

The session time zone: refused unless UTC
-----------------------------------------
:func:`require_utc_session` refuses a session whose ``spark.sql.session.timeZone`` is not
UTC, with a :class:`~sparkml_prod.core.errors.ConfigError` that names the setting found and
the fix. The library refuses rather than computing around it because Spark itself uses
the session zone where an instant has no zone of its own: :func:`micros` casts
``timestamp_ntz`` and ``date`` source columns through it, and the date of a scores
partition is ``to_date`` of the as-of in it. Under another zone these would silently
shift by the zone's offset. :func:`~sparkml_prod.core.session.get_spark` sets UTC; only a
submitter's explicit ``--conf`` can change it. It is a conf read: no Spark job runs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.errors import ConfigError

__all__ = [
    "TIMESTAMP_TYPES",
    "SESSION_TIME_ZONE",
    "UTC_ZONE_IDS",
    "parse_window",
    "micros",
    "prune_to",
    "spine_time_range",
    "to_utc",
    "naive_utc",
    "to_micros",
    "from_micros",
    "timestamp_lit",
    "instant_in",
    "utc_now",
    "utc_today",
    "require_utc_session",
]

TIMESTAMP_TYPES = ("timestamp", "timestamp_ntz", "date")
SESSION_TIME_ZONE = "spark.sql.session.timeZone"
# Zone ids that are UTC at every instant, exactly as Spark accepts them for the setting.
UTC_ZONE_IDS = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT", "UT", "Z", "+00:00", "-00:00"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_WINDOW = re.compile(r"^([1-9][0-9]*)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def to_utc(value: dt.date | dt.datetime) -> dt.datetime:
    """The aware UTC datetime of an instant, whatever ``TZ`` is.

    A ``date`` is midnight UTC at its start, a naive ``datetime`` is UTC wall-clock time,
    an aware ``datetime`` is converted to UTC.

    Examples
    --------
    >>> to_utc(dt.date(2024, 6, 1))
    datetime.datetime(2024, 6, 1, 0, 0, tzinfo=datetime.timezone.utc)
    >>> to_utc(dt.datetime(2024, 6, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=9))))
    datetime.datetime(2024, 6, 1, 0, 0, tzinfo=datetime.timezone.utc)
    """
    if isinstance(value, dt.datetime):
        if value.utcoffset() is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    raise TypeError(f"An instant must be a date or a datetime. Got {value!r} instead.")


def naive_utc(value: dt.date | dt.datetime) -> dt.datetime:
    """The library's Python form of an instant: a naive datetime holding UTC wall-clock.

    Examples
    --------
    >>> naive_utc(dt.date(2024, 6, 1))
    datetime.datetime(2024, 6, 1, 0, 0)
    """
    return to_utc(value).replace(tzinfo=None)


def to_micros(value: dt.date | dt.datetime) -> int:
    """Microseconds since the epoch of an instant (a date: midnight UTC; naive: UTC).

    Exact integer arithmetic, no float and no OS zone.

    Examples
    --------
    >>> to_micros(dt.date(2024, 6, 1))
    1717200000000000
    """
    delta = to_utc(value) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> dt.datetime:
    """The naive UTC datetime of microseconds since the epoch (inverse of :func:`to_micros`).

    Examples
    --------
    >>> from_micros(1717200000000000)
    datetime.datetime(2024, 6, 1, 0, 0)
    """
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=value)


def timestamp_lit(value: int | dt.date | dt.datetime) -> Column:
    """A Spark ``timestamp`` literal of an instant, built from epoch microseconds.

    ``value`` is microseconds since the epoch, or a date / datetime read by the UTC rule
    (:func:`to_utc`). Use it instead of ``F.lit(datetime)``, which pyspark converts
    through the OS zone.

    Examples
    --------
    >>> spark.range(1).select(timestamp_lit(dt.date(2024, 6, 1)).alias("t"))  # doctest: +SKIP
    DataFrame[t: timestamp]
    """
    if isinstance(value, bool) or not isinstance(value, (int, dt.date)):
        raise TypeError(f"An instant must be microseconds, a date or a datetime. Got {value!r}.")
    return F.timestamp_micros(F.lit(value if isinstance(value, int) else to_micros(value)))


def instant_in(col: str | Column, instants: Iterable[dt.date | dt.datetime]) -> Column:
    """Whether a time column holds one of ``instants`` (read by the UTC rule).

    The instants are :func:`timestamp_lit` literals compared with the raw column, so the
    condition still reaches Delta's data skipping. Use it instead of ``isin(datetimes)``.
    """
    column = F.col(col) if isinstance(col, str) else col
    return column.isin([timestamp_lit(t) for t in instants])


def utc_now() -> dt.datetime:
    """The current instant, aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


def utc_today() -> dt.date:
    """Today's date in UTC (not in the OS zone)."""
    return utc_now().date()


def require_utc_session(spark: SparkSession, owner: str) -> None:
    """Refuse a session whose ``spark.sql.session.timeZone`` is not UTC (module docs).

    Accepted: the ids in :data:`UTC_ZONE_IDS`, exactly. Only the conf is read: no Spark
    job runs.

    Raises
    ------
    ConfigError
        Naming the setting, the zone found and the fix.
    """
    zone = spark.conf.get(SESSION_TIME_ZONE)
    if zone not in UTC_ZONE_IDS:
        raise ConfigError(
            f"{owner} needs a UTC session time zone, but {SESSION_TIME_ZONE} is '{zone}': "
            f"timestamp_ntz and date columns, and the date of a scores partition, would be "
            f"read in '{zone}'. Set --conf {SESSION_TIME_ZONE}=UTC, or leave it unset "
            "(get_spark() sets it)."
        )


def parse_window(window: str, owner: str = "WindowAggregates", param: str = "windows") -> int:
    """Length of a window string such as ``"7d"`` in microseconds.

    Units: ``s`` seconds, ``m`` minutes, ``h`` hours, ``d`` days, ``w`` weeks.
    """
    match = _WINDOW.match(window) if isinstance(window, str) else None
    if match is None:
        raise ValueError(
            f"The '{param}' parameter of {owner} must be a list of windows such as "
            f"'7d', '12h' or '2w' (a positive integer and one of s, m, h, d, w). "
            f"Got {window!r} instead."
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)] * 1_000_000


def micros(col: str | Column) -> Column:
    """Microseconds since the epoch of a timestamp, timestamp_ntz or date column.

    A ``timestamp`` is an instant already; a ``timestamp_ntz`` or a ``date`` is cast
    through the session time zone, which :func:`require_utc_session` keeps UTC (a date:
    midnight UTC at its start).
    """
    column = F.col(col) if isinstance(col, str) else col
    return F.unix_micros(column.cast("timestamp"))


def spine_time_range(spine: DataFrame, as_of: str) -> tuple[int | None, int | None]:
    """Smallest and largest as-of of the spine, in microseconds (None for an empty spine)."""
    row = spine.agg(F.min(micros(as_of)), F.max(micros(as_of))).head()
    return (row[0], row[1]) if row is not None else (None, None)


def prune_to(source: DataFrame, timestamp: str, start: int | None, end: int) -> DataFrame:
    """Keep rows with ``start <= time < end`` (microseconds; ``start`` None: no lower bound).

    Bounds on a timestamp column are also given as literals on the raw column, so they
    reach Delta's data skipping and partition filters.
    """
    exact = micros(timestamp) < F.lit(end)
    if start is not None:
        exact = exact & (micros(timestamp) >= F.lit(start))
    if dict(source.dtypes)[timestamp] != "timestamp":
        return source.where(exact)
    bounds = F.col(timestamp) < timestamp_lit(end)
    if start is not None:
        bounds = bounds & (F.col(timestamp) >= timestamp_lit(start))
    return source.where(bounds & exact)
