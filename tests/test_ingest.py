"""``sparkml-prod ingest``: CSV, Parquet and JDBC events into Delta, malformed rows kept.

Every expected table is written out by hand: the good rows, the quarantined records with
their reasons, and the counts the command prints.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from chispa import assert_df_equality
from postgres import Postgres
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkml_prod.cli import main
from sparkml_prod.core.config import IngestConfig, from_mapping, load_config
from sparkml_prod.core.errors import ConfigError, EmptyResultError, SchemaError
from sparkml_prod.data.ingest import run_ingest
from sparkml_prod.data.ingest_plan import IngestPlan, event_instant
from sparkml_prod.data.ingest_sources import SourceSpec

UTC = dt.timezone.utc
D10, D11 = dt.date(2024, 3, 10), dt.date(2024, 3, 11)
EVENTS_SCHEMA = "user_id bigint, event_time timestamp, event_type string, amount double"
QUARANTINE_SCHEMA = (
    "ingest_date date, run_id string, source_file string, reason string, raw_record string"
)
CSV_HEADER = "user_id,event_time,event_type,amount\n"
CSV_10 = CSV_HEADER + "\n".join(
    [
        "1,2024-03-10 00:00:00,purchase,12.5",  # midnight UTC: the date's first instant
        "2,2024-03-10T09:00:00+09:00,page_view,",  # 00:00 UTC by its offset; no amount
        "3,2024-03-10 10:00:00,purchase,abc",  # amount does not parse
        "4,not-a-time,purchase,1.0",  # event time does not parse
        "5,2024-03-10 11:00:00,page_view",  # one field short
        "6,2024-03-10 12:00:00,page_view,1.0,9",  # one field too many
        ",2024-03-10 13:00:00,page_view,2.0",  # no user id
        '7,2024-03-10 23:59:59.999999,"view, quoted",',  # the date's last microsecond
        "8,2024-03-11 00:00:00,page_view,",  # the next date: in this file, not written
        "9,2024-03-09T23:30:00-01:00,purchase,3.0",  # 00:30 UTC on the 10th
    ]
)
CSV_11 = CSV_HEADER + "10,2024-03-11 08:00:00,purchase,1.0\n11,2024-03-11 09:00:00,page_view,\n"


def U(*parts: int) -> dt.datetime:
    """An aware UTC datetime: pyspark stores it as this instant whatever TZ is."""
    return dt.datetime(*parts, tzinfo=UTC)


GOOD_10 = [
    (1, U(2024, 3, 10), "purchase", 12.5),
    (2, U(2024, 3, 10), "page_view", None),
    (7, U(2024, 3, 10, 23, 59, 59, 999999), "view, quoted", None),
    (9, U(2024, 3, 10, 0, 30), "purchase", 3.0),
]
GOOD_11 = [(10, U(2024, 3, 11, 8), "purchase", 1.0), (11, U(2024, 3, 11, 9), "page_view", None)]


def csv_config(root: Path, **changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "source": {
            "format": "csv",
            "paths": [str(root / "landing" / "{date}" / "*.csv")],
            "schema": {
                "user_id": "bigint",
                "event_time": "timestamp",
                "event_type": "string",
                "amount": "double",
            },
        },
        "event_time": {"column": "event_time"},
        "required": ["user_id"],
        "events_table": str(root / "events"),
        "quarantine_table": str(root / "quarantine"),
    }
    settings.update(changes)
    return settings


def config_of(settings: dict[str, Any]) -> IngestConfig:
    return from_mapping(settings, IngestConfig, source="ingest.yaml")


def write_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def table(spark: SparkSession, path: Path) -> DataFrame:
    return spark.read.format("delta").load(str(path))


def versions(path: Path) -> int:
    """How many commits a Delta table has (its log's JSON files; no Spark job)."""
    return len(list((path / "_delta_log").glob("*.json")))


def test_csv_range_quarantine_and_a_rerun_of_one_date(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_10 = write_file(tmp_path / "landing" / "2024-03-10" / "part-0.csv", CSV_10)
    write_file(tmp_path / "landing" / "2024-03-11" / "part-0.csv", CSV_11)
    config_file = tmp_path / "ingest.yaml"
    config_file.write_text(yaml.safe_dump(csv_config(tmp_path), sort_keys=False))

    dates = ["--from", "2024-03-10", "--to", "2024-03-11"]
    assert main(["ingest", "--config", str(config_file), *dates]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("ingest run ingest-")
    assert printed[0].endswith(": 2024-03-10 .. 2024-03-11 (UTC, both included)")
    assert printed[1:3] == [
        f"read 12 records: 6 rows into {tmp_path / 'events'}, 5 quarantined into "
        f"{tmp_path / 'quarantine'}, 1 outside the dates (not written)",
        "quarantined: null in a required column 1, unparsable value 2, wrong field count 2",
    ]
    run_id = printed[0].split()[2].rstrip(":")
    reasons = [
        ("amount: 'abc' is not a double", "3,2024-03-10 10:00:00,purchase,abc"),
        ("event_time: 'not-a-time' is not a timestamp", "4,not-a-time,purchase,1.0"),
        ("wrong number of fields: expected 4", "5,2024-03-10 11:00:00,page_view"),
        ("wrong number of fields: expected 4", "6,2024-03-10 12:00:00,page_view,1.0,9"),
        (
            "null in required column(s) user_id",
            '{"user_id":null,"event_time":"2024-03-10T13:00:00.000Z",'
            '"event_type":"page_view","amount":2.0}',
        ),
    ]
    source_file = f"file:{file_10}"
    assert_df_equality(
        table(spark, tmp_path / "quarantine"),
        spark.createDataFrame(
            [(D10, run_id, source_file, *reason) for reason in reasons], QUARANTINE_SCHEMA
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )

    config = config_of(csv_config(tmp_path))
    before = versions(tmp_path / "events"), versions(tmp_path / "quarantine")
    again = run_ingest(spark, config, D10, run_id="run-10b")
    assert (again.read, again.written, again.quarantined, again.outside) == (10, 4, 5, 1)
    # one commit per table for the rerun: the date's rows replaced, not appended, and the
    # other date's rows untouched
    after = versions(tmp_path / "events"), versions(tmp_path / "quarantine")
    assert after == (before[0] + 1, before[1] + 1)
    assert_df_equality(
        table(spark, tmp_path / "events"),
        spark.createDataFrame(GOOD_10 + GOOD_11, EVENTS_SCHEMA),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert_df_equality(
        table(spark, tmp_path / "quarantine"),
        spark.createDataFrame(
            [(D10, "run-10b", source_file, *reason) for reason in reasons], QUARANTINE_SCHEMA
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_parquet_range_with_casts_nulls_and_rows_outside(
    spark: SparkSession, tmp_path: Path
) -> None:
    rows = [
        (1, "2024-03-09 23:59:59", "page_view", None),  # the day before: outside
        (1, "2024-03-10 00:00:00", "purchase", "1.5"),
        (2, "2024-03-11 23:59:59.999999", "purchase", "2"),
        (3, "2024-03-10 08:00:00", "purchase", "x"),  # amount does not cast
        (None, "2024-03-11 08:00:00", "page_view", None),  # no user id
        (4, None, "page_view", None),  # no event time: quarantined under the first date
        (5, "2024-03-12 00:00:00", "page_view", None),  # the day after: outside
    ]
    frame = spark.createDataFrame(
        rows, "user_id bigint, ts string, event_type string, amount string"
    )
    frame = frame.withColumn("ts", F.col("ts").cast("timestamp_ntz"))  # a wall clock, no zone
    frame.coalesce(1).write.parquet(str(tmp_path / "landing"))
    (parquet_file,) = (tmp_path / "landing").glob("*.parquet")
    settings = csv_config(
        tmp_path,
        source={
            "format": "parquet",
            "paths": [str(tmp_path / "landing" / "*.parquet")],
            "schema": {
                "user_id": "bigint",
                "ts": "timestamp_ntz",
                "event_type": "string",
                "amount": "double",
            },
        },
        event_time={"column": "ts"},
        rename={"ts": "event_time"},
    )
    run = run_ingest(spark, config_of(settings), D10, D11, run_id="run-p")
    assert (run.read, run.written, run.quarantined, run.outside) == (7, 2, 3, 2)
    assert run.reasons == {"null in a required column": 2, "unparsable value": 1}
    assert_df_equality(
        table(spark, tmp_path / "events"),
        spark.createDataFrame(
            [
                (1, U(2024, 3, 10), "purchase", 1.5),
                (2, U(2024, 3, 11, 23, 59, 59, 999999), "purchase", 2.0),
            ],
            EVENTS_SCHEMA,
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    source = f"file:{parquet_file}"
    assert_df_equality(
        table(spark, tmp_path / "quarantine"),
        spark.createDataFrame(
            [
                (
                    D10,
                    "run-p",
                    source,
                    "amount: 'x' (string) is not a double",
                    '{"user_id":3,"ts":"2024-03-10T08:00:00.000","event_type":"purchase",'
                    '"amount":"x"}',
                ),
                (
                    D11,
                    "run-p",
                    source,
                    "null in required column(s) user_id",
                    '{"user_id":null,"ts":"2024-03-11T08:00:00.000","event_type":"page_view",'
                    '"amount":null}',
                ),
                (
                    D10,
                    "run-p",
                    source,
                    "null in required column(s) ts",
                    '{"user_id":4,"ts":null,"event_type":"page_view","amount":null}',
                ),
            ],
            QUARANTINE_SCHEMA,
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )


@pytest.fixture()
def landed(tmp_path: Path) -> Path:
    write_file(tmp_path / "landing" / "2024-03-10" / "part-0.csv", CSV_11)
    return tmp_path


def jdbc_source(**changes: Any) -> dict[str, Any]:
    return {
        "format": "jdbc",
        "url": "jdbc:postgresql://127.0.0.1:1/db",
        "table": "events",
        "password_env": "SPARKML_INGEST_UNSET_PW",
        "driver": "org.postgresql.Driver",
        "schema": {"user_id": "bigint", "event_time": "timestamp"},
        **changes,
    }


TWO = {"user_id": "bigint", "event_time": "timestamp"}
REFUSALS: list[tuple[dict[str, Any], str]] = [
    (
        {"source": {"format": "xls", "schema": {"user_id": "bigint"}}},
        "key 'source.format' must be one of csv, parquet, jdbc, got 'xls'.",
    ),
    (
        {"source": {"format": "csv", "paths": ["{root}/x"], "schema": {"amount": "doubel"}}},
        "key 'source.schema.amount' must be a Spark SQL type such as bigint, double, string or "
        "timestamp, got 'doubel'.",
    ),
    (
        {"event_time": {"column": "ts"}},
        "key 'event_time.column' must be a column of source.schema (user_id, event_time, "
        "event_type, amount), got 'ts'.",
    ),
    (
        {"event_time": {"column": "event_time", "unit": "seconds"}},
        "key 'event_time.unit' must be absent for the timestamp column, got 'seconds'.",
    ),
    (
        {"required": ["user_id", "uid"]},
        "key 'required[1]' must be a column of source.schema (user_id, event_time, event_type, "
        "amount), got 'uid'.",
    ),
    (
        {"rename": {"amount": "user_id"}},
        "key 'rename.amount' must be a column name not used by another column, got 'user_id'.",
    ),
    (
        {"source": {"format": "csv", "paths": ["{root}/landing/{date}/*.json"], "schema": TWO}},
        "key 'source.paths[0]' must be a path or glob that matches at least one file, got "
        "'{root}/landing/2024-03-10/*.json'.",
    ),
    (
        {"source": {"format": "csv", "paths": ["{root}/x"], "num_partitions": 4, "schema": TWO}},
        "key 'source.num_partitions' must be absent for a csv source, got 4.",
    ),
    (
        {"source": jdbc_source()},
        "key 'source.password_env' names the environment variable 'SPARKML_INGEST_UNSET_PW', "
        "which is not set (or empty): set it to the password.",
    ),
    (
        {"source": jdbc_source(url="jdbc:postgresql://h/db?password=secret")},
        "key 'source.url' must not hold a password: name the environment variable that holds "
        "it in source.password_env.",
    ),
    (
        {"source": jdbc_source(query="SELECT 1")},
        "key 'source.table' must be given, or source.query, but not both, got 'events'.",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "message"), REFUSALS)
def test_the_whole_config_is_checked_before_any_data_is_read(
    spark: SparkSession, landed: Path, changes: dict[str, Any], message: str
) -> None:
    text = yaml.safe_dump(csv_config(landed, **changes), sort_keys=False)
    settings = yaml.safe_load(text.replace("{root}", str(landed)))
    with pytest.raises(ConfigError) as refused:
        run_ingest(spark, config_of(settings), D10, source="ingest.yaml")
    assert str(refused.value) == "ingest.yaml: " + message.replace("{root}", str(landed))
    assert not (landed / "events").exists() and not (landed / "quarantine").exists()


def test_ingest_needs_one_date_or_a_range(capsys: pytest.CaptureFixture[str]) -> None:
    for dates in ([], ["--date", "2024-03-10", "--from", "2024-03-10"], ["--from", "2024-03-10"]):
        assert main(["ingest", "--config", "conf/ingest.yaml", *dates]) == 2
        assert "sparkml-prod ingest: error: ingest needs " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ingest", "--config", "conf/ingest.yaml", "--to", "2024-02-30"])
    assert "--to must be a date YYYY-MM-DD, got '2024-02-30'" in capsys.readouterr().err


def test_a_password_in_the_yaml_is_refused(landed: Path) -> None:
    settings = csv_config(landed, source=jdbc_source(password="secret"))
    with pytest.raises(ConfigError, match=r"unknown key 'source.password'; expected one of: "):
        config_of(settings)


def test_an_existing_table_of_another_shape_and_an_empty_source_are_refused(
    spark: SparkSession, landed: Path
) -> None:
    shape = "user_id string, event_time timestamp, event_type string, amount double"
    spark.createDataFrame([], shape).write.format("delta").save(str(landed / "events"))
    with pytest.raises(SchemaError) as refused:
        run_ingest(spark, config_of(csv_config(landed)), D10)
    assert str(refused.value) == (
        f"Table '{landed / 'events'}' column 'user_id' has type string; expected bigint. "
        f"Columns present: {shape.replace(',', ',')}."
    )
    write_file(landed / "empty" / "2024-03-10" / "part-0.csv", CSV_HEADER)
    settings = csv_config(landed, events_table=str(landed / "events2"))
    settings["source"]["paths"] = [str(landed / "empty" / "{date}" / "*.csv")]
    with pytest.raises(EmptyResultError, match="the source gave no record for these dates"):
        run_ingest(spark, config_of(settings), D10)
    assert not (landed / "events2").exists()


JDBC_ROWS = """
    (1, 1, '2024-03-09 23:59:59', 'page_view', NULL),
    (2, 1, '2024-03-10 00:00:00', 'purchase', 5.0),
    (3, 2, '2024-03-10 02:30:00', 'purchase', 7.5),
    (4, NULL, '2024-03-10 12:00:00', 'page_view', NULL),
    (5, 3, '2024-03-10 23:59:59.999999', 'page_view', NULL),
    (6, 3, '2024-03-11 00:00:00', 'page_view', NULL),
    (9, 4, '2024-03-10 05:00:00', 'page_view', 1.0),
    (12, 5, '2024-03-12 00:00:00', 'purchase', 2.0)
"""


def test_jdbc_partitioned_reads_of_the_dates_only(
    spark: SparkSession, postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres.sql(
        "CREATE TABLE ingest_events (event_id bigint, user_id bigint, ts timestamp, "
        f"event_type text, amount double precision); INSERT INTO ingest_events VALUES {JDBC_ROWS}"
    )
    monkeypatch.setenv("SPARKML_INGEST_TEST_PW", postgres.password)
    source = {
        "format": "jdbc",
        "url": postgres.jdbc_url,
        "table": "ingest_events",
        "user": postgres.user,
        "password_env": "SPARKML_INGEST_TEST_PW",
        "driver": "org.postgresql.Driver",
        "schema": {
            "user_id": "bigint",
            "ts": "timestamp_ntz",
            "event_type": "string",
            "amount": "double",
        },
        "partition_column": "event_id",
        "num_partitions": 3,
    }
    settings = csv_config(
        tmp_path, source=source, event_time={"column": "ts"}, rename={"ts": "event_time"}
    )
    log_start = postgres.log_file.stat().st_size
    postgres.sql(f"ALTER ROLE {postgres.user} SET log_statement = 'all'", superuser=True)
    try:
        run = run_ingest(spark, config_of(settings), D10, run_id="run-j")
    finally:
        postgres.sql(f"ALTER ROLE {postgres.user} RESET log_statement", superuser=True)
    # Only the date's rows came back: MIN/MAX over them (2 and 9, not 1 and 12) set the
    # bounds of the three partitions.
    assert (run.read, run.written, run.quarantined, run.outside) == (5, 4, 1, 0)
    assert (run.partitions, run.bounds) == (3, ("2", "9"))
    # What the database ran (its statement log): one MIN/MAX query and one query per
    # partition, each with the dates' filter.
    statements = sorted(
        line.split(": ", 2)[2].strip()
        for line in postgres.log_file.read_text()[log_start:].splitlines()
        if "execute <unnamed>/C_1: SELECT" in line and "ingest_events" in line
    )
    dates = "(\"ts\" >= '2024-03-10 00:00:00') AND (\"ts\" < '2024-03-11 00:00:00')"
    columns = 'SELECT "user_id","ts","event_type","amount" FROM ingest_events  WHERE'
    where = f'{columns} (("ts" IS NOT NULL) AND {dates}) AND'
    assert statements == sorted(
        [
            f'{where} ("event_id" < 4 or "event_id" is null)',
            f'{where} ("event_id" >= 4 AND "event_id" < 6)',
            f'{where} ("event_id" >= 6)',
            'SELECT "lo","hi" FROM (SELECT MIN("event_id") AS lo, MAX("event_id") AS hi FROM '
            "ingest_events bounds_source WHERE \"ts\" >= TIMESTAMP '2024-03-10 00:00:00' AND "
            "\"ts\" < TIMESTAMP '2024-03-11 00:00:00') ingest_bounds",
        ]
    )
    assert_df_equality(
        table(spark, tmp_path / "events"),
        spark.createDataFrame(
            [
                (1, U(2024, 3, 10), "purchase", 5.0),
                (2, U(2024, 3, 10, 2, 30), "purchase", 7.5),
                (3, U(2024, 3, 10, 23, 59, 59, 999999), "page_view", None),
                (4, U(2024, 3, 10, 5), "page_view", 1.0),
            ],
            EVENTS_SCHEMA,
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert_df_equality(
        table(spark, tmp_path / "quarantine"),
        spark.createDataFrame(
            [
                (
                    D10,
                    "run-j",
                    f"{postgres.jdbc_url}#ingest_events",
                    "null in required column(s) user_id",
                    '{"user_id":null,"ts":"2024-03-10T12:00:00.000","event_type":"page_view",'
                    '"amount":null}',
                )
            ],
            QUARANTINE_SCHEMA,
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_the_example_config_loads() -> None:
    config = load_config(Path(__file__).parent.parent / "conf" / "ingest.yaml", IngestConfig)
    assert (config.source.format, config.source.paths) == (
        "csv",
        ["demo-output/landing/events/{date}/*.csv"],
    )
    assert list(config.source.schema) == [
        "user_id",
        "event_time",
        "event_type",
        "session_id",
        "amount",
        "product_category",
    ]
    assert (config.event_time.column, config.required) == ("event_time", ["user_id"])


def instants(spark: SparkSession, kind: str, values: list[Any], **how: Any) -> list[Any]:
    """Epoch microseconds of ``values`` (a column of type ``kind``) read as an event time."""
    spec = SourceSpec(
        format="parquet",
        columns={"t": T.DataType.fromDDL(kind)},
        time_column="t",
        time_format=how.get("format"),
    )
    plan = IngestPlan(
        spec=spec,
        required=(),
        output_names={"t": "t"},
        events_table="unused",
        quarantine_table="unused",
        time_unit=how.get("unit"),
        time_text="a timestamp",
        templated=False,
        paths={},
        jdbc_where=None,
        jdbc_partitioning={},
    )
    frame = spark.createDataFrame([(v,) for v in values], f"t {kind}")
    return [r[0] for r in frame.select(F.unix_micros(event_instant(plan))).collect()]


def test_event_times_from_text_epoch_numbers_and_dates(spark: SparkSession) -> None:
    at_0930 = 1_710_063_000_000_000  # 2024-03-10 09:30:00 UTC
    text = ["10/03/2024 09:30", "31/02/2024 00:00", "soon", None]
    assert instants(spark, "string", text, format="dd/MM/yyyy HH:mm") == [at_0930, None, None, None]
    assert instants(spark, "string", ["2024-03-10 09:30:00", "2024-03-10T18:30:00+09:00"]) == [
        at_0930,
        at_0930,
    ]
    assert instants(spark, "bigint", [1_710_063_000_123, None], unit="milliseconds") == [
        at_0930 + 123_000,
        None,
    ]
    assert instants(spark, "double", [1_710_063_000.5], unit="seconds") == [at_0930 + 500_000]
    assert instants(spark, "date", [D10]) == [1_710_028_800_000_000]  # midnight UTC
