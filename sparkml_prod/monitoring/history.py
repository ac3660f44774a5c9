"""The monitoring history: one Delta table every monitoring run appends its measurements to.

Each run writes the :class:`~sparkml_prod.monitoring.records.MetricRecord` list it
measured, under its ``run_id``, with the instant it was computed. The table has exactly
this schema (:data:`HISTORY_DDL`)::

    run_id        STRING    NOT NULL   the monitoring run that wrote the row
    as_of         DATE      NOT NULL   the scored date measured
    model_name    STRING    NOT NULL
    model_version INT       NOT NULL
    variant       STRING    NOT NULL   champion, challenger, holdout, all, ...
    metric        STRING    NOT NULL   psi, missing_rate, row_count, roc_auc, ...
    feature       STRING               a feature, "score", or NULL for the whole run
    value         DOUBLE               NULL while status is pending
    warn          DOUBLE               the warn threshold, NULL if none
    alert         DOUBLE               the alert threshold, NULL if none
    status        STRING    NOT NULL   ok, warn, alert or pending
    detail        STRING               why, or a small JSON payload (an interval)
    computed_at   TIMESTAMP NOT NULL   when the run computed the row (a UTC instant)

One row per ``(run_id, as_of, model_name, model_version, variant, metric, feature)``,
except that a binned metric (``score_share``) has one row per bin, the bin in ``detail``.

Reruns replace, in one commit
-----------------------------
:func:`write_history` replaces the rows of its ``run_id`` with Delta's ``replaceWhere``
on the data column ``run_id`` (Delta 4.4 accepts a predicate on any column:
``spark.databricks.delta.replaceWhere.dataColumns.enabled`` is true by default). Delete
and insert are one commit, so a reader sees the old rows or the new ones, never both or
none, and other runs' rows are untouched. Delta refuses the write, and leaves the table as
it was, if a row of another run slipped into it.

The table is not partitioned: a run writes a few hundred rows, so a partition per run (or
per date) would be thousands of tiny directories and files after a year of nightly runs,
and ``replaceWhere`` on ``run_id`` needs no partition. Each run's rows land in their own
files, whose min/max statistics let Delta skip the others when a query filters on
``run_id`` or ``model_name``. :func:`write_history` creates the table from the DDL on
first write (one commit of its own, with no rows), so ``NOT NULL`` is enforced by Delta
on every write.

Instants go to Spark as epoch microseconds (:func:`~sparkml_prod.core.time.timestamp_lit`)
and come back as microseconds, so neither ``TZ`` nor the session zone can move
``computed_at``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType, _parse_datatype_string

from sparkml_prod.core.errors import EmptyResultError, MonitoringAlertError
from sparkml_prod.core.tables import (
    is_path,
    read_table,
    schema_of,
    sql_literal,
    table_exists,
    table_path,
    write_table,
)
from sparkml_prod.core.time import from_micros, timestamp_lit, to_micros
from sparkml_prod.monitoring.records import MetricRecord

__all__ = [
    "HISTORY_DDL",
    "history_schema",
    "write_history",
    "read_history",
    "latest_measurements",
    "latest_run",
    "collect_records",
    "alerts",
    "check_alerts",
    "format_outcomes",
    "format_summary",
]

HISTORY_DDL = (
    "run_id STRING NOT NULL, as_of DATE NOT NULL, model_name STRING NOT NULL, "
    "model_version INT NOT NULL, variant STRING NOT NULL, metric STRING NOT NULL, "
    "feature STRING, value DOUBLE, warn DOUBLE, alert DOUBLE, status STRING NOT NULL, "
    "detail STRING, computed_at TIMESTAMP NOT NULL"
)
# The MetricRecord fields, in table order: the columns between run_id and computed_at.
_RECORD_FIELDS = [
    "as_of",
    "model_name",
    "model_version",
    "variant",
    "metric",
    "feature",
    "value",
    "warn",
    "alert",
    "status",
    "detail",
]
_KEY = ["model_name", "as_of", "variant", "metric", "feature"]


@functools.cache
def history_schema() -> StructType:
    """:data:`HISTORY_DDL` as a ``StructType`` (parsed by Spark: needs an active session)."""
    schema = _parse_datatype_string(HISTORY_DDL)
    assert isinstance(schema, StructType)
    return schema


def write_history(
    spark: SparkSession,
    table: str,
    run_id: str,
    records: Sequence[MetricRecord],
    computed_at: dt.datetime,
) -> None:
    """Write one monitoring run's records, replacing what an earlier try of the run wrote.

    Parameters
    ----------
    spark : SparkSession
    table : str
        The history table (a path or a catalog name); created on first write.
    run_id : str
        The monitoring run; its rows are replaced, other runs' rows are untouched.
    records : sequence of MetricRecord
        What the run measured (at least one).
    computed_at : datetime
        When the run computed them: aware, or naive holding UTC (the library's rule).

    Raises
    ------
    EmptyResultError
        ``records`` is empty: a rerun would silently delete the run's earlier rows.
    SchemaError
        The existing table lacks a column of :data:`HISTORY_DDL` or has another type.

    Examples
    --------
    >>> write_history(spark, "demo-output/monitoring/history", "monitor-2024-06-02",
    ...               records, computed_at=utc_now())  # doctest: +SKIP
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(
            f"The 'run_id' parameter of write_history must be a non-empty string. "
            f"Got {run_id!r} instead."
        )
    if not records:
        raise EmptyResultError(
            f"Monitoring run '{run_id}' has no records to write to history table '{table}'; "
            "a rerun with none would delete the run's earlier rows. Check that the run "
            "measured anything (scores present for its as-of dates)."
        )
    rows = [(run_id, *(getattr(r, name) for name in _RECORD_FIELDS)) for r in records]
    schema = StructType([f for f in history_schema().fields if f.name != "computed_at"])
    df = spark.createDataFrame(rows, schema).withColumn(
        "computed_at", timestamp_lit(to_micros(computed_at))
    )
    if table_exists(spark, table):
        read_table(spark, table, required=schema_of(_empty(spark)))
    else:
        _create(spark, table)
    write_table(df, table, mode="overwrite", options={"replaceWhere": _run_predicate(run_id)})


def read_history(
    spark: SparkSession,
    table: str,
    model_name: str | None = None,
    metrics: Sequence[str] | None = None,
) -> DataFrame:
    """The history table, checked against the schema, optionally of one model and metrics.

    An absent table reads as an empty history (no monitoring run yet). No Spark job runs.
    """
    if not table_exists(spark, table):
        return _empty(spark)
    df = read_table(spark, table, required=schema_of(_empty(spark)))
    if model_name is not None:
        df = df.where(F.col("model_name") == F.lit(model_name))
    if metrics is not None:
        df = df.where(F.col("metric").isin(list(metrics)))
    return df


def latest_measurements(history: DataFrame) -> DataFrame:
    """Per ``(model_name, as_of, variant, metric, feature)``, the rows of the last run.

    A date is measured again by later runs (a rerun, or realised AUC once labels are
    complete): the rows of the run with the latest ``computed_at`` (then ``run_id``) win.
    All rows of that run for the key are kept, so every bin of a binned metric stays.
    """
    stamp = F.struct("computed_at", "run_id")
    window = Window.partitionBy(*_KEY)
    return (
        history.withColumn("_latest", F.max(stamp).over(window))
        .where(stamp == F.col("_latest"))
        .drop("_latest")
    )


def latest_run(history: DataFrame) -> tuple[str, dt.datetime] | None:
    """The ``run_id`` and ``computed_at`` (naive UTC) of the last run, or None if empty."""
    row = (
        history.select("run_id", F.unix_micros("computed_at").alias("micros"))
        .orderBy(F.col("micros").desc(), F.col("run_id").desc())
        .head()
    )
    return None if row is None else (str(row["run_id"]), from_micros(int(row["micros"])))


def collect_records(history: DataFrame, max_rows: int = 100_000) -> list[MetricRecord]:
    """Collect history rows as records, ordered; refuses more than ``max_rows``.

    The history is a small metrics table, but a filter forgotten on a years-old table
    should fail here rather than fill the driver.
    """
    ordered = history.select(*_RECORD_FIELDS).orderBy(*_KEY, "detail")
    rows = ordered.limit(max_rows + 1).collect()
    if len(rows) > max_rows:
        raise ValueError(
            f"The history selection has more than {max_rows} rows; filter it (model name, "
            "metrics, dates) before collecting, or raise max_rows."
        )
    return [MetricRecord(**row.asDict()) for row in rows]


def alerts(records: Sequence[MetricRecord]) -> list[MetricRecord]:
    """The records whose status is ``alert``, in their order."""
    return [r for r in records if r.status == "alert"]


def check_alerts(records: Sequence[MetricRecord], fail_on_alert: bool) -> None:
    """Raise :class:`MonitoringAlertError` listing the alerts, when ``fail_on_alert``.

    Returns quietly when ``fail_on_alert`` is false or nothing alerted.

    Examples
    --------
    >>> check_alerts(records, fail_on_alert=config.fail_on_alert)  # doctest: +SKIP
    """
    found = alerts(records)
    if not fail_on_alert or not found:
        return
    lines = [
        f"  {r.model_name} v{r.model_version} {r.as_of.isoformat()} {r.variant}: "
        f"{r.metric if r.feature is None else f'{r.metric} of {r.feature}'} = {_number(r.value)} "
        f"(alert threshold {_number(r.alert)})"
        for r in found
    ]
    raise MonitoringAlertError(
        f"Monitoring found {len(found)} alert(s) and fail_on_alert is set:\n"
        + "\n".join(lines)
        + "\nLook into the named metrics (the dashboard shows their history); set "
        "fail_on_alert: false to record alerts without failing the job."
    )


def format_summary(records: Sequence[MetricRecord]) -> str:
    """A plain-text table of the records that warned or alerted, alerts first.

    Examples
    --------
    >>> print(format_summary(records))  # doctest: +SKIP
    2 of 7 measurements warned or alerted (1 alert, 1 warn):
    status  as_of       model     variant   metric  feature  value  warn  alert
    alert   2024-06-02  churn v3  champion  psi     tenure   0.31   0.1   0.25
    warn    2024-06-02  churn v3  champion  psi     spend    0.12   0.1   0.25
    """
    flagged = [r for r in records if r.status in ("alert", "warn")]
    n_alert = sum(r.status == "alert" for r in flagged)
    if not flagged:
        return f"None of {len(records)} measurements warned or alerted."
    flagged.sort(key=lambda r: (r.status != "alert", r.as_of, r.variant, r.metric, _feature(r)))
    header = ["status", "as_of", "model", "variant", "metric", "feature", "value", "warn", "alert"]
    table = [header] + [
        [
            r.status,
            r.as_of.isoformat(),
            f"{r.model_name} v{r.model_version}",
            r.variant,
            r.metric,
            _feature(r),
            _number(r.value),
            _number(r.warn),
            _number(r.alert),
        ]
        for r in flagged
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    title = (
        f"{len(flagged)} of {len(records)} measurements warned or alerted "
        f"({n_alert} alert, {len(flagged) - n_alert} warn):"
    )
    return "\n".join([title, *lines])


# Realised-performance and impact metrics of a whole variant (no feature) the outcome
# summary shows.
_OUTCOMES = ("n", "roc_auc", "log_loss", "top_decile_lift", "auc_difference", "uplift")


def format_outcomes(records: Sequence[MetricRecord]) -> str:
    """One line per scored date, model version and variant whose outcomes this run measured:
    realised AUC with its DeLong interval, log loss, top-decile lift, the
    challenger's AUC difference and the action's overall uplift on the targeted users;
    or the date a pending one becomes evaluable.

    Examples
    --------
    >>> print(format_outcomes(records))  # doctest: +SKIP
    Realised performance:
    2024-06-01  churn v3  champion: n 7,008, ROC AUC 0.8139 [0.8021, 0.8257], ...
    2024-07-01  churn v3  champion: pending, evaluable on 2024-07-31
    """
    found: dict[tuple[dt.date, str, int, str], dict[str, MetricRecord]] = {}
    for r in records:
        if r.feature is None and r.metric in _OUTCOMES:
            key = (r.as_of, r.model_name, r.model_version, r.variant)
            found.setdefault(key, {})[r.metric] = r
    lines = []
    for (as_of, name, version, variant), metrics in sorted(found.items()):
        who = f"{as_of}  {name} v{version}  {variant}"
        auc = metrics.get("roc_auc")
        if auc is None:
            continue
        detail = json.loads(auc.detail or "{}")
        if auc.status == "pending":
            lines.append(f"{who}: pending, evaluable on {detail.get('evaluable_on', '?')}")
            continue
        if auc.value is None:
            lines.append(f"{who}: no AUC ({detail.get('reason', auc.status)})")
            continue
        parts = [f"n {int(metrics['n'].value or 0):,}" if "n" in metrics else "n ?"]
        low, high = detail.get("low"), detail.get("high")
        interval = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
        parts.append(f"ROC AUC {auc.value:.4f}{interval}")
        for metric, label, digits in (
            ("log_loss", "log loss", 4),
            ("top_decile_lift", "top-decile lift", 2),
        ):
            value = metrics[metric].value if metric in metrics else None
            if value is not None:
                parts.append(f"{label} {value:.{digits}f}")
        for metric, label in (("auc_difference", "AUC vs champion"), ("uplift", "uplift")):
            record = metrics.get(metric)
            if record is not None and record.value is not None:
                extra = json.loads(record.detail or "{}")
                verdict = "significant" if extra.get("significant") else "not significant"
                parts.append(
                    f"{label} {record.value:+.4f} [{extra['low']:+.4f}, {extra['high']:+.4f}] "
                    f"({verdict})"
                )
        lines.append(f"{who}: " + ", ".join(parts))
    if not lines:
        return "Realised performance: no scored date was evaluated in this run."
    return "\n".join(["Realised performance:", *lines])


# -- helpers ---------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "-" if value is None else format(value, ".6g")


def _feature(record: MetricRecord) -> str:
    return "-" if record.feature is None else record.feature


def _run_predicate(run_id: str) -> str:
    return f"`run_id` = {sql_literal(run_id)}"


def _empty(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], history_schema())


def _create(spark: SparkSession, table: str) -> None:
    """Create the empty table from the DDL, so its NOT NULL columns are Delta constraints."""
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).addColumns(history_schema())
    builder = builder.location(table_path(table)) if is_path(table) else builder.tableName(table)
    builder.execute()
