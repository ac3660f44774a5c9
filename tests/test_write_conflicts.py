"""A partition replace that loses to concurrent writers: retried a bounded number of times,
then a clear, retryable error; a writer that missed the table's creation cannot wipe it.

Delta's refusals are injected (the write raises the exception Delta raises for a lost
commit), so each path runs deterministically; ``test_hdfs.py`` runs two real jobs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from cards import make_card
from chispa import assert_df_equality
from delta.exceptions.base import (
    ConcurrentAppendException,
    MetadataChangedException,
    ProtocolChangedException,
)
from pyspark.ml import Pipeline
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import SparkSession
from pyspark.sql.types import DateType, LongType, StringType, StructField, StructType

from sparkml_prod.cli import main
from sparkml_prod.core import tables
from sparkml_prod.core.errors import ConcurrentWriteError
from sparkml_prod.core.tables import WRITE_ATTEMPTS, overwrite_partition, read_table, write_table
from sparkml_prod.features import WindowAggregates
from sparkml_prod.registry import ModelRegistry

SCORES = StructType(
    [
        StructField("user_id", LongType()),
        StructField("as_of", DateType()),
        StructField("variant", StringType()),
    ]
)
JUNE1, JUNE2 = dt.date(2024, 6, 1), dt.date(2024, 6, 2)


class Conflicts:
    """``write_table`` that raises ``errors`` (one per call) before writing for real."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, df: Any, ref: str, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        write_table(df, ref, **kwargs)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "RETRY_BACKOFF_S", 0.0)


def test_a_refused_commit_is_retried_and_the_partition_written_once(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = str(tmp_path / "scores")
    write_table(spark.createDataFrame([(9, JUNE2, "x")], SCORES), path, partition_by=["as_of"])
    writes = Conflicts(
        ProtocolChangedException(message="The protocol version of the Delta table changed"),
        ConcurrentAppendException(message="Files were added to partition [as_of=2024-06-01]"),
    )
    monkeypatch.setattr(tables, "write_table", writes)
    new = spark.createDataFrame([(1, JUNE1, "a"), (2, JUNE1, "b")], SCORES)
    with caplog.at_level(logging.WARNING, logger="sparkml_prod.core.tables"):
        overwrite_partition(new, path, {"as_of": JUNE1})
    assert_df_equality(
        read_table(spark, path),
        spark.createDataFrame([(1, JUNE1, "a"), (2, JUNE1, "b"), (9, JUNE2, "x")], SCORES),
        ignore_row_order=True,
    )
    assert len(writes.calls) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"Table '{path}': replacing partition `as_of` = DATE'2024-06-01' conflicted with a "
        f"concurrent write (attempt {n} of {WRITE_ATTEMPTS}, {reason}); retrying from the "
        "table's new snapshot"
        for n, reason in [
            (1, "ProtocolChangedException: The protocol version of the Delta table changed"),
            (2, "ConcurrentAppendException: Files were added to partition [as_of=2024-06-01]"),
        ]
    ]


def test_a_write_that_always_conflicts_fails_retryably_and_commits_nothing(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "scores")
    before = spark.createDataFrame([(1, JUNE1, "old"), (9, JUNE2, "x")], SCORES)
    write_table(before, path, partition_by=["as_of"])
    writes = Conflicts(
        *[ConcurrentAppendException(message="Files were added") for _ in range(WRITE_ATTEMPTS)]
    )
    monkeypatch.setattr(tables, "write_table", writes)
    new = spark.createDataFrame([(1, JUNE1, "new")], SCORES)
    with pytest.raises(ConcurrentWriteError) as error:
        overwrite_partition(new, path, {"as_of": JUNE1})
    assert str(error.value) == (
        f"Table '{path}': replacing partition `as_of` = DATE'2024-06-01' conflicted with "
        f"concurrent writes to the table {WRITE_ATTEMPTS} times (last: "
        "ConcurrentAppendException: Files were added). Nothing of this write was committed "
        "and the table's other partitions are as the other writers left them. Rerun the "
        "job: the write replaces its partition, so a rerun leaves exactly one copy."
    )
    assert error.value.exit_code == 8
    assert len(writes.calls) == WRITE_ATTEMPTS
    assert_df_equality(read_table(spark, path), before, ignore_row_order=True)


def test_a_writer_that_saw_no_table_replaces_only_its_partition_of_the_one_created_since(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another job created the table between this writer's existence check and its write:
    # the write still replaces only its own partition, never the whole table.
    path = str(tmp_path / "scores")
    write_table(spark.createDataFrame([(9, JUNE2, "x")], SCORES), path, partition_by=["as_of"])
    monkeypatch.setattr(tables, "table_exists", lambda spark, ref: False)
    overwrite_partition(spark.createDataFrame([(1, JUNE1, "a")], SCORES), path, {"as_of": JUNE1})
    monkeypatch.undo()
    assert_df_equality(
        read_table(spark, path),
        spark.createDataFrame([(1, JUNE1, "a"), (9, JUNE2, "x")], SCORES),
        ignore_row_order=True,
    )


def test_the_command_line_exits_8_and_says_to_rerun(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = str(tmp_path / "events")
    write_table(
        spark.createDataFrame(
            [(1, dt.datetime(2024, 5, 30, tzinfo=dt.timezone.utc), "page_view", None)],
            "user_id long, event_time timestamp, event_type string, amount double",
        ),
        events,
    )
    stages = [
        WindowAggregates(sourceTable=events, windows=["7d"], aggregations=[{"agg": "count"}]),
        SQLTransformer(statement="SELECT *, 1.0D / (1.0D + event_count_7d) AS score FROM __THIS__"),
    ]
    spine = spark.createDataFrame(
        [(1, dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc))], "user_id long, as_of timestamp"
    )
    registry = ModelRegistry(spark, str(tmp_path / "models"))
    registry.register("m", Pipeline(stages=stages).fit(spine), make_card(events, "7d"))
    registry.set_alias("m", "production", 1)
    config = tmp_path / "score.yaml"
    output = str(tmp_path / "scores")
    config.write_text(
        f"model: m@production\nregistry_root: {tmp_path / 'models'}\noutput_table: {output}\n"
    )
    writes = Conflicts(
        *[MetadataChangedException(message="The metadata changed") for _ in range(WRITE_ATTEMPTS)]
    )
    monkeypatch.setattr(tables, "write_table", writes)
    assert main(["score", "--config", str(config), "--as-of", "2024-06-01"]) == 8
    assert capsys.readouterr().err.endswith(
        f"sparkml-prod score: error: Table '{output}': replacing partition `as_of` = "
        f"DATE'2024-06-01' conflicted with concurrent writes to the table {WRITE_ATTEMPTS} "
        "times (last: MetadataChangedException: The metadata changed). Nothing of this write "
        "was committed and the table's other partitions are as the other writers left them. "
        "Rerun the job: the write replaces its partition, so a rerun leaves exactly one copy.\n"
    )
    assert not os.path.exists(output)
