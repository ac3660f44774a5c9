"""Pinned source versions: features, spine and labels read a Delta table as it was at a
version (time travel), and a version that cannot be read exactly is refused before any
Spark job, with the table, the version, the versions available and the fix."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.ml import PipelineModel
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame, SparkSession
from spark_jobs import no_job_runs

from sparkml_prod.core.errors import SourceVersionError
from sparkml_prod.core.tables import _z85_uuid, read_table, table_versions, write_table
from sparkml_prod.data.labels import add_labels, labels_complete_until
from sparkml_prod.data.spine import active_entity_spine
from sparkml_prod.features import (
    PointInTimeLookup,
    Recency,
    WindowAggregates,
    pin_source_versions,
)

T = dt.datetime
AS_OF = T(2024, 3, 10)
SCHEMA = "user_id long, event_time timestamp, event_type string, amount double"
VERSION_0 = [
    (1, T(2024, 3, 5), "purchase", 10.0),
    (1, T(2024, 3, 8), "page_view", None),
    (2, T(2024, 3, 1), "purchase", 5.0),  # outside 7d before as-of
]
APPENDED = [  # version 1
    (1, T(2024, 3, 9), "purchase", 20.0),
    (3, T(2024, 3, 7), "page_view", None),  # a user that version 0 does not have
    (2, T(2024, 3, 12), "purchase", 7.0),  # after as-of: a label, not a feature
]
FEATURES = "user_id long, as_of timestamp, event_count_7d long, amount_sum_purchase_7d double"
RECENCY = (
    "user_id long, as_of timestamp, days_since_last_event double, days_since_first_event double"
)
SPINE = "user_id long, as_of timestamp"


@pytest.fixture(scope="module")
def events(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Delta table at version 1, whose version 0 had only ``VERSION_0``."""
    ref = str(tmp_path_factory.mktemp("versions") / "events")
    write_table(spark.createDataFrame(VERSION_0, SCHEMA).coalesce(1), ref)
    write_table(spark.createDataFrame(APPENDED, SCHEMA).coalesce(1), ref, mode="append")
    return ref


@pytest.fixture()
def spine(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([(1, AS_OF), (2, AS_OF), (3, AS_OF)], SPINE)


def aggregates(source: str, version: int | None = None) -> WindowAggregates:
    return WindowAggregates(
        sourceTable=source,
        sourceVersion=version,
        windows=["7d"],
        filters={"purchase": "event_type = 'purchase'"},
        aggregations=[{"agg": "count"}, {"agg": "sum", "column": "amount", "filter": "purchase"}],
    )


def test_pinned_window_aggregates_ignore_appended_events(
    spark: SparkSession, events: str, spine: DataFrame
) -> None:
    # Window [03-03, 03-10): version 0 has user 1's events of the 5th (a purchase of 10)
    # and the 8th; version 1 adds user 1's purchase of 20 on the 9th and user 3's view.
    pinned = spark.createDataFrame(
        [(1, AS_OF, 2, 10.0), (2, AS_OF, 0, 0.0), (3, AS_OF, 0, 0.0)], FEATURES
    )
    latest = spark.createDataFrame(
        [(1, AS_OF, 3, 30.0), (2, AS_OF, 0, 0.0), (3, AS_OF, 1, 0.0)], FEATURES
    )
    same = dict(ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(aggregates(events, version=0).transform(spine), pinned, **same)
    assert_df_equality(aggregates(events).transform(spine), latest, **same)


def test_pinned_recency_ignores_appended_events(
    spark: SparkSession, events: str, spine: DataFrame
) -> None:
    pinned = spark.createDataFrame(
        [(1, AS_OF, 2.0, 5.0), (2, AS_OF, 9.0, 9.0), (3, AS_OF, None, None)], RECENCY
    )
    latest = spark.createDataFrame(
        [(1, AS_OF, 1.0, 5.0), (2, AS_OF, 9.0, 9.0), (3, AS_OF, 3.0, 3.0)], RECENCY
    )
    same = dict(ignore_row_order=True, ignore_nullable=True)
    stage = Recency(sourceTable=events, sourceVersion=0)
    assert_df_equality(stage.transform(spine), pinned, **same)
    assert_df_equality(Recency(sourceTable=events).transform(spine), latest, **same)


def test_pinned_version_survives_a_pipeline_model_round_trip(
    spark: SparkSession, events: str, spine: DataFrame, tmp_path: Path
) -> None:
    fitted = PipelineModel([aggregates(events), Recency(sourceTable=events)])
    PipelineModel(pin_source_versions(fitted, {events: 0})).save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    assert [stage.getSourceVersion() for stage in loaded.stages] == [0, 0]
    expected = spark.createDataFrame(
        [
            (1, AS_OF, 2, 10.0, 2.0, 5.0),
            (2, AS_OF, 0, 0.0, 9.0, 9.0),
            (3, AS_OF, 0, 0.0, None, None),
        ],
        FEATURES + ", days_since_last_event double, days_since_first_event double",
    )
    out = loaded.transform(spine)  # the pinned rows of the two tests above
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_pinned_spine_and_labels_ignore_appended_rows(
    spark: SparkSession, events: str, spine: DataFrame
) -> None:
    # Each result differs from the latest version's: there user 3 (a view on the 7th) is
    # active, user 2 has a purchase on the 12th, and the data run to the 12th.
    # Active in [03-03, 03-10) in version 0: user 1 only.
    assert_df_equality(
        active_entity_spine(spark, events, [AS_OF], lookback="7d", source_version=0),
        spark.createDataFrame([(1, AS_OF)], SPINE),
        ignore_nullable=True,
    )
    # Purchases in [03-10, 03-17) in version 0: none.
    assert_df_equality(
        add_labels(
            spine, events, horizon="7d", event_filter="event_type = 'purchase'", source_version=0
        ),
        spark.createDataFrame(
            [(1, AS_OF, 0.0), (2, AS_OF, 0.0), (3, AS_OF, 0.0)], SPINE + ", label double"
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    # Complete until midnight after the last event of version 0, on the 8th.
    assert labels_complete_until(spark, events, "event_time", source_version=0) == T(2024, 3, 9)


def test_a_version_the_table_does_not_have_is_refused_before_any_job(
    spark: SparkSession, events: str, spine: DataFrame
) -> None:
    assert table_versions(spark, events) == (0, 1)
    err = no_job_runs(spark, lambda: aggregates(events, version=5).transform(spine))
    assert isinstance(err, SourceVersionError)
    assert str(err) == (
        f"Table '{events}' has no version 5: the versions available are 0..1, and 1 is the "
        "current one. Check that the reference points at the table the version was recorded "
        "from (a table that was dropped and created again starts again at version 0)."
    )
    spark.createDataFrame(VERSION_0, SCHEMA).createOrReplaceTempView("unversioned_events")
    err = no_job_runs(
        spark, lambda: active_entity_spine(spark, "unversioned_events", [AS_OF], source_version=0)
    )
    assert isinstance(err, SourceVersionError)
    assert str(err) == (
        "Table 'unversioned_events' is not a Delta table, so it cannot be read at version 0: "
        "only Delta tables (by path or by catalog name) keep versions. Point the reference "
        "at a Delta table, or leave the version unset to read it as it is."
    )


def test_a_version_whose_log_was_cleaned_up_is_refused_before_any_job(
    spark: SparkSession, spine: DataFrame, tmp_path: Path
) -> None:
    ref = str(tmp_path / "events")
    rows = spark.createDataFrame(VERSION_0, SCHEMA).coalesce(1)
    write_table(rows, ref, options={"delta.checkpointInterval": "1"})
    write_table(rows, ref, mode="append")  # version 1, with a checkpoint
    # As log cleanup does once a commit before a checkpoint is older than the retention.
    os.remove(f"{ref}/_delta_log/{0:020d}.json")
    assert table_versions(spark, ref) == (1, 1)
    err = no_job_runs(spark, lambda: Recency(sourceTable=ref, sourceVersion=0).transform(spine))
    assert isinstance(err, SourceVersionError)
    assert str(err) == (
        f"Table '{ref}' no longer has version 0 in its log: the versions available are 1..1. "
        "Delta cleans up versions older than delta.logRetentionDuration (30 days by default), "
        "so version 0 cannot be read exactly any more. To keep versions for rebuilds, set the "
        "table properties delta.logRetentionDuration and delta.deletedFileRetentionDuration "
        "to a longer interval."
    )


def test_a_vacuumed_version_is_refused_before_any_job(
    spark: SparkSession, spine: DataFrame, tmp_path: Path
) -> None:
    ref = str(tmp_path / "events")
    write_table(spark.createDataFrame(VERSION_0, SCHEMA).coalesce(1), ref)
    [version_0_file] = [name for name in os.listdir(ref) if name.endswith(".parquet")]
    overwrite = spark.createDataFrame(APPENDED, SCHEMA).coalesce(1)
    write_table(overwrite, ref, mode="overwrite")  # version 1
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        spark.sql(f"VACUUM delta.`{ref}` RETAIN 0 HOURS").collect()  # versions 2 and 3
    finally:
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "true")
    assert not os.path.exists(f"{ref}/{version_0_file}")
    err = no_job_runs(spark, lambda: aggregates(ref, version=0).transform(spine))
    assert isinstance(err, SourceVersionError)
    assert str(err) == (
        f"Table '{ref}' version 0 can no longer be read exactly: its data file "
        f"'{version_0_file}' was removed from the table after version 0 and has since been "
        "deleted (vacuumed). The log still has versions 0..3, but VACUUM deletes the files of "
        "replaced versions once they are older than its retention. To keep versions readable "
        "for rebuilds, set the table property delta.deletedFileRetentionDuration to a longer "
        "interval and never VACUUM with a shorter retention."
    )
    # The version the overwrite wrote has all its files: it passes the same checks.
    assert read_table(spark, ref, {"amount": "double"}, version=1).columns == [
        "user_id",
        "event_time",
        "event_type",
        "amount",
    ]


def test_a_catalog_table_reads_at_a_version(spark: SparkSession) -> None:
    rows = spark.createDataFrame(VERSION_0, SCHEMA)
    try:
        write_table(rows, "pinned_events")
        write_table(spark.createDataFrame(APPENDED, SCHEMA), "pinned_events", mode="append")
        assert table_versions(spark, "pinned_events") == (0, 1)
        assert_df_equality(
            read_table(spark, "pinned_events", version=0),
            rows,
            ignore_row_order=True,
            ignore_nullable=True,
        )
    finally:
        spark.sql("DROP TABLE IF EXISTS pinned_events")


def test_deletion_vector_file_names_decode_as_delta_writes_them() -> None:
    # A descriptor of a deletion vector and the file that Delta 4.4 wrote for it.
    assert _z85_uuid("(f:sK>dTLoWgc=FzUtd]") == "e9ee8778-e6be-4d25-b50d-67a96ef61f1f"


def test_source_version_must_be_a_version_or_minus_one() -> None:
    with pytest.raises(ValueError) as err:
        WindowAggregates(sourceVersion=-2)
    assert str(err.value) == (
        "The 'sourceVersion' parameter of WindowAggregates must be a Delta table version >= 0 "
        "(or -1 for the latest version). Got -2 instead."
    )
    with pytest.raises(ValueError) as err:
        Recency().setSourceVersion("3")  # type: ignore[arg-type]
    assert str(err.value) == (
        "The 'sourceVersion' parameter of Recency must be a Delta table version >= 0 "
        "(or -1 for the latest version). Got '3' instead."
    )
    assert Recency(sourceVersion=-1).getSourceVersion() is None
    assert Recency(sourceVersion=4).setSourceVersion(None).getSourceVersion() is None


def test_pin_source_versions_returns_pinned_copies(tmp_path: Path) -> None:
    events, other = str(tmp_path / "events"), str(tmp_path / "attributes")
    stages = [
        aggregates(events),
        Recency(sourceTable=f"delta.`{events}`"),  # the same table, spelled differently
        SQLTransformer(statement="SELECT * FROM __THIS__"),  # no source
        PointInTimeLookup(sourceTable=other, attributeCols=["plan"]),  # not in the versions
    ]
    pinned = pin_source_versions(stages, {events: 3})
    assert [p is s for p, s in zip(pinned, stages, strict=True)] == [False, False, True, True]
    assert [p.getSourceVersion() for p in pinned[:2]] == [3, 3]
    assert pinned[0].getWindows() == ["7d"]  # everything else is copied
    assert pinned[3].getSourceVersion() is None
    assert [s.getSourceVersion() for s in stages[:2]] == [None, None]  # originals untouched
    [nested] = pin_source_versions(PipelineModel([PipelineModel(stages[:2])]), {events: 1})
    assert [s.getSourceVersion() for s in nested.stages] == [1, 1]
    assert [s.getSourceVersion() for s in stages[:2]] == [None, None]
