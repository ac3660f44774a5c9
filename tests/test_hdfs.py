"""End to end on ``hdfs://`` paths (a MiniDFSCluster on 127.0.0.1): the events table, the
feature build, the training matrix, the model registry, idempotent scoring, and two
scoring jobs writing one scores table at once."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cards import make_card
from chispa import assert_df_equality
from hdfs import MiniDfs
from pyspark.ml import Pipeline
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from standalone import log_tail, stop_process_groups
from submit import clean_env

from sparkml_prod.cli import main
from sparkml_prod.core.config import ScoreConfig, TrainConfig, from_mapping
from sparkml_prod.core.tables import delta_version, read_table, write_table
from sparkml_prod.core.write_barrier import BARRIER_ENV
from sparkml_prod.data.matrix import build_training_matrix
from sparkml_prod.features import WindowAggregates, load_feature_spec
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.registry.storage import TMP_PREFIX, Storage
from sparkml_prod.runs.score import run_scoring

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
UTC = dt.timezone.utc
A, B = dt.date(2024, 3, 10), dt.date(2024, 3, 20)
C, D = dt.date(2024, 3, 16), dt.date(2024, 3, 17)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


EVENTS_SCHEMA = "user_id long, event_time timestamp, event_type string, amount double"
EVENTS = [
    (1, utc(2024, 3, 9), "page_view", None),
    (1, utc(2024, 3, 3), "purchase", 5.0),  # exactly A - 7d: inside A's window
    (2, utc(2024, 3, 5), "page_view", None),
    (2, utc(2024, 3, 12), "purchase", 7.0),  # after A: user 2's label at A, not a feature
    (3, utc(2024, 3, 10), "page_view", None),  # exactly A: not seen at A
    (3, utc(2024, 3, 15), "page_view", None),
    (4, utc(2024, 2, 1), "page_view", None),  # never active in a window
]
FEATURE_SPEC = """\
stages:
  - type: window_aggregates
    source: events
    windows: [7d]
    filters: {purchase: "event_type = 'purchase'"}
    aggregations:
      - {agg: count}
      - {agg: sum, column: amount, filter: purchase}
"""
# score = 1 / (1 + events in the 7 days before as-of)
SCORE_SQL = "SELECT *, 1.0D / (1.0D + event_count_7d) AS score FROM __THIS__"
SCORES_SCHEMA = (
    "user_id long, as_of date, score double, model_name string, model_version int, variant string"
)
# Every user active in the 7 days before each date, scored by m/2 (score SQL above).
SCORES = {
    A: [(1, A, 1 / 3, "m", 2, "champion"), (2, A, 1 / 2, "m", 2, "champion")],
    B: [(3, B, 1 / 2, "m", 2, "champion")],
    C: [(1, C, 1 / 2, "m", 2, "champion"), (2, C, 1 / 2, "m", 2, "champion")]
    + [(3, C, 1 / 3, "m", 2, "champion")],
    D: [(2, D, 1 / 2, "m", 2, "champion"), (3, D, 1 / 3, "m", 2, "champion")],
}


@pytest.fixture(scope="module")
def setup(spark: SparkSession, hdfs: MiniDfs, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The events table and a registry on HDFS; m/1 and m/2 registered, production -> 1."""
    local = tmp_path_factory.mktemp("hdfs-e2e")
    events = hdfs.url("/e2e/events")
    write_table(spark.createDataFrame(EVENTS, EVENTS_SCHEMA), events)
    registry_root = hdfs.url("/e2e/models")
    registry = ModelRegistry(spark, registry_root)
    spine = spark.createDataFrame([(1, utc(2024, 3, 1))], "user_id long, as_of timestamp")
    stages = [
        WindowAggregates(sourceTable=events, windows=["7d"], aggregations=[{"agg": "count"}]),
        SQLTransformer(statement=SCORE_SQL),
    ]
    for _ in range(2):
        registry.register("m", Pipeline(stages=stages).fit(spine), make_card(events, "7d"))
    registry.set_alias("m", "production", 1)
    spec = local / "features.yaml"
    spec.write_text(FEATURE_SPEC)
    return {"local": local, "events": events, "registry": registry_root, "spec": str(spec)}


def scores(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, SCORES_SCHEMA)


def written(spark: SparkSession, table: str) -> DataFrame:
    columns = ("user_id", "as_of", "score", "model_name", "model_version", "variant")
    return read_table(spark, table).select(*columns)


def test_the_events_table_is_on_hdfs(spark: SparkSession, hdfs: MiniDfs, setup: Any) -> None:
    assert setup["events"].startswith(f"hdfs://127.0.0.1:{hdfs.namenode_port}/")
    assert_df_equality(
        read_table(spark, setup["events"]),
        spark.createDataFrame(EVENTS, EVENTS_SCHEMA),
        ignore_row_order=True,
    )
    # The files are HDFS's: the NameNode lists the Delta log the session wrote.
    storage = Storage(spark, setup["events"])
    assert storage.scheme == "hdfs"
    assert ("00000000000000000000.json", False) in storage.list_dir(f"{setup['events']}/_delta_log")


def test_the_feature_build_reads_and_writes_hdfs(
    spark: SparkSession, hdfs: MiniDfs, setup: Any
) -> None:
    output = hdfs.url("/e2e/features")
    config = setup["local"] / "features_job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "feature_spec": setup["spec"],
                "sources": {"events": setup["events"]},
                "spine": {"source": "events", "as_of_dates": [A, B], "lookback": "7d"},
                "output_table": output,
            }
        )
    )
    assert main(["features", "--config", str(config)]) == 0
    expected = spark.createDataFrame(
        [
            (1, utc(2024, 3, 10), 2, 5.0),
            (2, utc(2024, 3, 10), 1, 0.0),
            (3, utc(2024, 3, 20), 1, 0.0),
        ],
        "user_id long, as_of timestamp, event_count_7d long, amount_sum_purchase_7d double",
    )
    assert_df_equality(
        read_table(spark, output).select(*expected.columns),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_the_training_matrix_is_written_and_pinned_on_hdfs(
    spark: SparkSession, hdfs: MiniDfs, setup: Any
) -> None:
    matrix_table = hdfs.url("/e2e/matrix")
    config = from_mapping(
        {
            "model_name": "m",
            "registry_root": setup["registry"],
            "feature_spec": setup["spec"],
            "sources": {"events": setup["events"]},
            "spine": {"source": "events", "lookback": "7d"},
            "label": {
                "source": "events",
                "filter": "event_type = 'purchase'",
                "horizon": "7d",
                "complete_until": dt.date(2024, 4, 1),
            },
            "split": {"train": [A], "validation": [], "test": [B]},
            "matrix_table": matrix_table,
            "report_dir": str(setup["local"] / "report"),
        },
        TrainConfig,
        source="test config",
    )
    stages = load_feature_spec(setup["spec"], sources=config.sources)
    versions = {setup["events"]: delta_version(spark, setup["events"])}
    dates = {"train": [dt.datetime(2024, 3, 10)]}
    built = build_training_matrix(spark, config, dates, stages, versions)
    assert (built.table, built.version, built.rows) == (matrix_table, 0, 2)
    assert built.feature_columns == ["event_count_7d", "amount_sum_purchase_7d"]
    expected = spark.createDataFrame(
        [(1, utc(2024, 3, 10), 0, "train", 2, 5.0), (2, utc(2024, 3, 10), 1, "train", 1, 0.0)],
        "user_id long, as_of timestamp, label int, split string, event_count_7d long, "
        "amount_sum_purchase_7d double",
    )
    # Read back by time travel on HDFS: the version check lists the log through HDFS.
    assert_df_equality(
        built.read(spark).select(*expected.columns).withColumn("label", F.col("label").cast("int")),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_the_registry_on_hdfs_saves_loads_verified_and_moves_aliases(
    spark: SparkSession, setup: Any
) -> None:
    registry = ModelRegistry(spark, setup["registry"])
    assert [v.version for v in registry.versions("m")] == [1, 2]
    assert registry.aliases("m") == {"production": 1}
    registry.set_alias("m", "production", 2)  # FileContext rename with OVERWRITE on HDFS
    assert registry.aliases("m") == {"production": 2}
    storage = Storage(spark, setup["registry"])
    assert storage.read_text(f"{setup['registry']}/m/aliases/production", alias=True) is not None
    assert not [
        n for n, _ in storage.list_dir(f"{setup['registry']}/m") if n.startswith(TMP_PREFIX)
    ]
    assert [n for n, _ in storage.list_dir(f"{setup['registry']}/m/aliases")] == ["production"]

    model = registry.load("m@production")  # every file checked against the card's hashes
    spine = spark.createDataFrame([(1, utc(2024, 3, 10))], "user_id long, as_of timestamp")
    assert [r["score"] for r in model.transform(spine).collect()] == [1 / 3]


def test_a_rename_onto_an_existing_hdfs_directory_is_refused_and_moves_nothing(
    spark: SparkSession, hdfs: MiniDfs
) -> None:
    storage = Storage(spark, hdfs.url("/rename"))
    assert storage._file_context() is not None  # HDFS has a FileContext binding
    source, target = hdfs.url("/rename/.tmp-new"), hdfs.url("/rename/2")
    storage.write_text(f"{source}/card.json", "new")
    storage.write_text(f"{target}/card.json", "old")
    assert storage.rename_new(source, target) is False
    assert storage.read_text(f"{target}/card.json") == "old"
    assert storage.read_text(f"{source}/card.json") == "new"
    assert storage.list_dir(target) == [("card.json", False)]  # nothing moved into it
    assert storage.rename_new(source, hdfs.url("/rename/3")) is True
    assert storage.read_text(hdfs.url("/rename/3/card.json")) == "new"
    assert not storage.exists(source)


def _score_job(
    config: Path, first: dt.date, second: dt.date, log: Path, env: dict[str, str]
) -> Any:
    """``sparkml-prod score`` for ``first`` then ``second``, in a new process (own JVM)."""
    code = (
        "import sys; from sparkml_prod.cli import main; "
        f"sys.exit(main(['score', '--config', {str(config)!r}, '--as-of', '{first}']) "
        f"or main(['score', '--config', {str(config)!r}, '--as-of', '{second}']))"
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env=env,
            start_new_session=True,
        )


def test_two_scoring_jobs_write_one_hdfs_scores_table_at_once_and_a_rerun_replaces_its_date(
    spark: SparkSession, hdfs: MiniDfs, setup: Any, tmp_path: Path
) -> None:
    ModelRegistry(spark, setup["registry"]).set_alias("m", "production", 2)
    table = hdfs.url("/e2e/scores_concurrent")
    config = tmp_path / "score.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model": "m@production", "registry_root": setup["registry"], "output_table": table}
        )
    )
    barrier = tmp_path / "barrier"
    env = clean_env(
        PYTHONPATH=str(ROOT),  # this checkout, whatever the virtualenv's editable install
        PYSPARK_PYTHON=sys.executable,
        SPARKML_PROD_MASTER="local[1]",
        SPARKML_PROD_DRIVER_MEMORY="1g",
        **{BARRIER_ENV: f"{barrier},2"},
    )
    # Both jobs first create the table (neither sees it: both wait at the barrier after
    # Delta read the empty snapshot), then write another date each into the table both
    # created. Job 1: A then C; job 2: B then D.
    logs = [tmp_path / "job-1.log", tmp_path / "job-2.log"]
    jobs = [
        _score_job(config, A, C, logs[0], env),
        _score_job(config, B, D, logs[1], env),
    ]
    try:
        codes = [job.wait(timeout=300) for job in jobs]
    finally:
        stop_process_groups(jobs)
    texts = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], "\n".join(f"--- {log}\n{log_tail(log)}" for log in logs)

    # The first writes raced to create the table: one created it, the other's commit was
    # refused (nothing of it committed) and tried again from the new snapshot. The second
    # writes, disjoint partitions of an existing table, Delta committed one after the other.
    retries = [line for text in texts for line in text.splitlines() if "retrying" in line]
    assert len(retries) == 1, retries
    assert "(attempt 1 of 4, ProtocolChangedException: " in retries[0]
    assert_df_equality(
        written(spark, table),
        scores(spark, SCORES[A] + SCORES[B] + SCORES[C] + SCORES[D]),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert delta_version(spark, table) == 3  # four commits: one per date, no extra
    assert sorted(os.listdir(barrier)) == ["1", "2"]

    # A rerun of a date replaces that date's partition: one copy, the other dates untouched.
    others = read_table(spark, table).where(F.col("as_of") != F.lit(A)).collect()
    same = ScoreConfig(model="m@production", registry_root=setup["registry"], output_table=table)
    rerun = run_scoring(spark, same, A)
    assert rerun.rows == 2
    after = read_table(spark, table)
    assert_df_equality(
        written(spark, table),
        scores(spark, SCORES[A] + SCORES[B] + SCORES[C] + SCORES[D]),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert {r["run_id"] for r in after.where(F.col("as_of") == F.lit(A)).collect()} == {
        rerun.run_id
    }
    assert_df_equality(  # same rows, run ids and scoring times
        after.where(F.col("as_of") != F.lit(A)),
        spark.createDataFrame(others, after.schema),
        ignore_row_order=True,
    )
