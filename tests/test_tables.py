from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql.types import DateType, LongType, StringType, StructField, StructType

from sparkml_prod.core.errors import SchemaError, TableNotFoundError
from sparkml_prod.core.tables import (
    overwrite_partition,
    read_table,
    require_columns,
    table_expression,
    write_table,
)

SCORES = StructType(
    [
        StructField("user_id", LongType()),
        StructField("as_of", DateType()),
        StructField("variant", StringType()),
    ]
)
JUNE1, JUNE2 = dt.date(2024, 6, 1), dt.date(2024, 6, 2)


def test_table_expression_addresses_paths_and_names() -> None:
    assert table_expression("delta.`/data/events`") == "delta.`/data/events`"
    assert table_expression("s3a://bucket/events") == "delta.`s3a://bucket/events`"
    assert table_expression("/data/events") == "delta.`/data/events`"
    assert table_expression("analytics.events") == "analytics.events"


def test_delta_round_trip_by_path(spark: SparkSession, tmp_path: Path) -> None:
    df = spark.createDataFrame([(1, JUNE1, "a"), (2, JUNE1, "b")], SCORES)
    write_table(df, str(tmp_path / "t"))
    assert_df_equality(read_table(spark, str(tmp_path / "t")), df, ignore_row_order=True)
    assert_df_equality(read_table(spark, f"delta.`{tmp_path / 't'}`"), df, ignore_row_order=True)


def test_overwrite_partition_replaces_only_that_partition(
    spark: SparkSession, tmp_path: Path
) -> None:
    ref = str(tmp_path / "scores")
    first = spark.createDataFrame([(1, JUNE1, "a"), (2, JUNE1, "a")], SCORES)
    other = spark.createDataFrame([(1, JUNE2, "x"), (3, JUNE2, "x")], SCORES)
    second = spark.createDataFrame([(2, JUNE1, "b"), (4, JUNE1, "b")], SCORES)

    overwrite_partition(first, ref, {"as_of": JUNE1})
    overwrite_partition(other, ref, {"as_of": JUNE2})
    overwrite_partition(second, ref, {"as_of": JUNE1})

    expected = spark.createDataFrame(
        [(2, JUNE1, "b"), (4, JUNE1, "b"), (1, JUNE2, "x"), (3, JUNE2, "x")], SCORES
    )
    assert_df_equality(read_table(spark, ref), expected, ignore_row_order=True)


def test_overwrite_partition_refuses_rows_of_another_partition(
    spark: SparkSession, tmp_path: Path
) -> None:
    ref = str(tmp_path / "scores")
    first = spark.createDataFrame([(1, JUNE1, "a")], SCORES)
    overwrite_partition(first, ref, {"as_of": JUNE1})
    stray = spark.createDataFrame([(9, JUNE1, "b"), (9, JUNE2, "b")], SCORES)
    with pytest.raises(Exception, match="DELTA_REPLACE_WHERE_MISMATCH"):
        overwrite_partition(stray, ref, {"as_of": JUNE1})
    assert_df_equality(read_table(spark, ref), first)


def test_read_table_names_a_missing_table(spark: SparkSession, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(TableNotFoundError) as err:
        read_table(spark, missing)
    assert str(err.value) == (
        f"Table '{missing}' not found: no Delta table at path '{missing}'. "
        "Check the reference in the config, or create the table first."
    )
    with pytest.raises(TableNotFoundError) as err:
        read_table(spark, "no_such_table")
    assert str(err.value) == (
        "Table 'no_such_table' not found: no table 'no_such_table'. "
        "Check the reference in the config, or create the table first."
    )


def test_require_columns_names_missing_column_and_columns_present(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1, JUNE1, "a")], SCORES)
    with pytest.raises(SchemaError) as err:
        require_columns(df, {"user_id": "bigint", "event_time": "timestamp"}, table="events")
    assert str(err.value) == (
        "Table 'events' is missing required column(s) event_time. "
        "Columns present: user_id bigint, as_of date, variant string."
    )


def test_require_columns_names_mistyped_column(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1, JUNE1, "a")], SCORES)
    with pytest.raises(SchemaError) as err:
        require_columns(df, {"as_of": "timestamp", "variant": "string"}, table="scores")
    assert str(err.value) == (
        "Table 'scores' column 'as_of' has type date; expected timestamp. "
        "Columns present: user_id bigint, as_of date, variant string."
    )
    assert require_columns(df, {"user_id": ("int", "bigint")}, table="scores") is df


def test_read_table_checks_required_columns(spark: SparkSession, tmp_path: Path) -> None:
    ref = str(tmp_path / "t")
    write_table(spark.createDataFrame([(1, JUNE1, "a")], SCORES), ref)
    with pytest.raises(
        SchemaError, match=f"Table '{ref}' is missing required column\\(s\\) amount"
    ):
        read_table(spark, ref, required={"amount": "double"})
