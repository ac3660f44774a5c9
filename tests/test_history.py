from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType

from sparkml_prod.core.errors import EmptyResultError, MonitoringAlertError
from sparkml_prod.core.tables import table_exists
from sparkml_prod.core.time import timestamp_lit
from sparkml_prod.monitoring.history import (
    alerts,
    check_alerts,
    format_outcomes,
    format_summary,
    history_schema,
    read_history,
    write_history,
)
from sparkml_prod.monitoring.records import MetricRecord

JUNE1, JUNE2 = dt.date(2024, 6, 1), dt.date(2024, 6, 2)
# 2024-06-02 03:04:05.123456 UTC, given as an aware datetime in UTC+9
AT_A = dt.datetime(2024, 6, 2, 12, 4, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=9)))
AT_A_MICROS = 1717297445123456
AT_B = dt.datetime(2024, 6, 3, 1, 0)  # naive: UTC
AT_B_MICROS = 1717376400000000


def record(metric: str, feature: str | None, value: float | None, status: str, **kw: object):
    fields: dict[str, object] = {
        "as_of": JUNE1,
        "model_name": "churn",
        "model_version": 3,
        "variant": "champion",
        "warn": 0.1,
        "alert": 0.25,
        "detail": None,
    }
    fields.update(kw)
    return MetricRecord(metric=metric, feature=feature, value=value, status=status, **fields)


FIRST_TRY = [
    record("psi", "tenure", 0.05, "ok"),
    record("psi", "spend", 0.3, "alert"),
]
RETRY = [
    record("psi", "tenure", 0.06, "ok"),
    record("psi", "spend", 0.12, "warn"),
    record("row_count", None, 1000.0, "ok", warn=None, alert=None),
]
OTHER_RUN = [
    record("psi", "tenure", 0.02, "ok", as_of=JUNE2),
    record(
        "roc_auc",
        None,
        None,
        "pending",
        as_of=JUNE2,
        warn=None,
        alert=None,
        detail='{"evaluable_from": "2024-07-02"}',
    ),
    record("psi", "tenure", 0.2, "warn", model_name="upsell", model_version=1),
]


def expected(
    spark: SparkSession, run_id: str, records: list[MetricRecord], micros: int
) -> DataFrame:
    rows = [
        (
            run_id,
            r.as_of,
            r.model_name,
            r.model_version,
            r.variant,
            r.metric,
            r.feature,
            r.value,
            r.warn,
            r.alert,
            r.status,
            r.detail,
            micros,
        )
        for r in records
    ]
    fields = history_schema().fields
    schema = StructType([*fields[:-1], StructField("micros", LongType(), False)])
    df = spark.createDataFrame(rows, schema)
    return df.select(
        *[f.name for f in fields[:-1]], F.timestamp_micros("micros").alias("computed_at")
    )


@pytest.fixture(scope="module")
def history_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """run-a written, run-b written, then run-a rerun with other records."""
    table = str(tmp_path_factory.mktemp("history") / "history")
    assert not table_exists(spark, table)
    write_history(spark, table, "run-a", FIRST_TRY, AT_A)
    assert table_exists(spark, table)
    write_history(spark, table, "run-b", OTHER_RUN, AT_B)
    write_history(spark, table, "run-a", RETRY, AT_A)
    return table


def test_rerun_leaves_exactly_its_new_rows_and_the_other_run_untouched(
    spark: SparkSession, history_table: str
) -> None:
    history = read_history(spark, history_table)
    assert history.schema == history_schema()
    assert_df_equality(
        history.where("run_id = 'run-a'"),
        expected(spark, "run-a", RETRY, AT_A_MICROS),
        ignore_row_order=True,
    )
    assert_df_equality(
        history.where("run_id = 'run-b'"),
        expected(spark, "run-b", OTHER_RUN, AT_B_MICROS),
        ignore_row_order=True,
    )


def test_first_write_creates_the_table_and_each_write_is_one_commit(
    spark: SparkSession, history_table: str
) -> None:
    commits = spark.sql(f"DESCRIBE HISTORY delta.`{history_table}`")
    assert sorted(tuple(r) for r in commits.select("version", "operation").collect()) == [
        (0, "CREATE TABLE"),
        (1, "WRITE"),
        (2, "WRITE"),
        (3, "WRITE"),
    ]


def test_computed_at_is_the_instant_given(spark: SparkSession, history_table: str) -> None:
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    shown = read_history(spark, history_table).select(
        "run_id",
        F.date_format("computed_at", "yyyy-MM-dd HH:mm:ss.SSSSSS").alias("at"),
        (F.col("computed_at") == timestamp_lit(AT_A_MICROS)).alias("is_a"),
    )
    assert sorted(set(tuple(r) for r in shown.collect())) == [
        ("run-a", "2024-06-02 03:04:05.123456", True),
        ("run-b", "2024-06-03 01:00:00.000000", False),
    ]


def test_read_history_filters_by_model_and_metric(
    spark: SparkSession, history_table: str, tmp_path: Path
) -> None:
    selected = read_history(spark, history_table, model_name="churn", metrics=["psi"])
    assert sorted(tuple(r) for r in selected.select("run_id", "feature").collect()) == [
        ("run-a", "spend"),
        ("run-a", "tenure"),
        ("run-b", "tenure"),
    ]
    assert read_history(spark, str(tmp_path / "absent")).schema == history_schema()


def test_empty_records_are_refused(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(EmptyResultError, match="Monitoring run 'run-a' has no records"):
        write_history(spark, str(tmp_path / "history"), "run-a", [], AT_A)


ALERTS = [
    record("psi", "tenure", 0.05, "ok"),
    record("psi", "spend", 0.31, "alert", as_of=JUNE2),
    record("missing_rate", "region", 0.12, "warn", variant="challenger"),
    record("roc_auc", None, 0.61, "alert", variant="challenger", warn=0.7, alert=0.65),
    record("roc_auc", None, None, "pending", warn=None, alert=None),
]


def test_check_alerts_raises_listing_each_alert() -> None:
    assert [r.metric for r in alerts(ALERTS)] == ["psi", "roc_auc"]
    with pytest.raises(MonitoringAlertError) as err:
        check_alerts(ALERTS, fail_on_alert=True)
    assert err.value.exit_code == 7
    assert str(err.value) == (
        "Monitoring found 2 alert(s) and fail_on_alert is set:\n"
        "  churn v3 2024-06-02 champion: psi of spend = 0.31 (alert threshold 0.25)\n"
        "  churn v3 2024-06-01 challenger: roc_auc = 0.61 (alert threshold 0.65)\n"
        "Look into the named metrics (the dashboard shows their history); set "
        "fail_on_alert: false to record alerts without failing the job."
    )


def test_check_alerts_is_quiet_without_alerts_or_without_the_flag() -> None:
    check_alerts(ALERTS, fail_on_alert=False)
    check_alerts([r for r in ALERTS if r.status != "alert"], fail_on_alert=True)
    check_alerts([], fail_on_alert=True)


def test_format_summary_lists_alerts_then_warnings() -> None:
    assert format_summary(ALERTS) == (
        "3 of 5 measurements warned or alerted (2 alert, 1 warn):\n"
        "status  as_of       model     variant     metric        feature  value  warn  alert\n"
        "alert   2024-06-01  churn v3  challenger  roc_auc       -        0.61   0.7   0.65\n"
        "alert   2024-06-02  churn v3  champion    psi           spend    0.31   0.1   0.25\n"
        "warn    2024-06-01  churn v3  challenger  missing_rate  region   0.12   0.1   0.25"
    )
    assert format_summary(ALERTS[:1]) == "None of 1 measurements warned or alerted."


def test_format_outcomes_gives_the_realised_auc_interval_lift_uplift_and_pending_dates() -> None:
    july = dt.date(2024, 7, 1)
    challenger = {"variant": "challenger", "warn": None, "alert": None}
    champion = {"warn": None, "alert": None}
    records = [
        record("psi", "spend", 0.3, "alert"),  # drift: not an outcome
        record("n", None, 7008.0, "ok", **champion),
        record(
            "roc_auc",
            None,
            0.8,
            "ok",
            detail='{"delong": 0.0001, "low": 0.7804, "high": 0.8196}',
            **champion,
        ),
        record("log_loss", None, 0.4, "ok", **champion),
        record("top_decile_lift", None, 2.5, "ok", **champion),
        record(
            "uplift",
            None,
            0.02,
            "ok",
            detail='{"low": -0.01, "high": 0.05, "significant": false}',
            **champion,
        ),
        record("uplift", "decile_1", 0.1, "ok", detail='{"low": 0.0, "high": 0.2}', **champion),
        record("n", None, 700.0, "ok", **challenger),
        record(
            "roc_auc",
            None,
            0.78,
            "ok",
            detail='{"delong": 0.0004, "low": 0.7408, "high": 0.8192}',
            **challenger,
        ),
        record(
            "auc_difference",
            None,
            -0.02,
            "ok",
            detail='{"low": -0.1, "high": 0.06, "significant": false}',
            **challenger,
        ),
        record(
            "roc_auc", None, None, "pending", as_of=july, detail='{"evaluable_on": "2024-07-31"}'
        ),
    ]
    assert format_outcomes(records) == (
        "Realised performance:\n"
        "2024-06-01  churn v3  challenger: n 700, ROC AUC 0.7800 [0.7408, 0.8192], AUC vs "
        "champion -0.0200 [-0.1000, +0.0600] (not significant)\n"
        "2024-06-01  churn v3  champion: n 7,008, ROC AUC 0.8000 [0.7804, 0.8196], log loss "
        "0.4000, top-decile lift 2.50, uplift +0.0200 [-0.0100, +0.0500] (not significant)\n"
        "2024-07-01  churn v3  champion: pending, evaluable on 2024-07-31"
    )
    assert format_outcomes(records[:1]) == (
        "Realised performance: no scored date was evaluated in this run."
    )
