"""Batch scoring end to end: submitted to a real standalone cluster, and killed mid-write.

Both tests share one small but real model (window aggregates and recency over generated
events, then XGBoost), registered with a complete model card, so the scoring job
resolves ``m@production`` exactly as in production.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from cards import make_card
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.ml import Pipeline
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from standalone import log_tail, standalone_cluster, stop_process_groups
from submit import clean_env, delta_jar_args, package_zip

from sparkml_prod.core.config import ModelConfig, ScoreConfig, ScoringSpineConfig
from sparkml_prod.core.tables import overwrite_partition, read_table, write_table
from sparkml_prod.data.labels import add_labels
from sparkml_prod.data.spine import active_entity_spine
from sparkml_prod.data.synthetic import SyntheticSpec, generate_events
from sparkml_prod.features import Recency, WindowAggregates
from sparkml_prod.modeling.training import model_stages
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.runs.score import run_scoring

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the virtualenv's interpreter, not resolved: the venv needs its path
VENV_BIN = Path(PYTHON).parent
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
SPEC = SyntheticSpec(n_users=400, start=dt.date(2023, 1, 1), end=dt.date(2023, 5, 1), seed=11)
AS_OF = dt.date(2023, 4, 15)
COMPARED = ["user_id", "as_of", "score", "model_name", "model_version", "variant"]
# Crash test: enough users that writing the partition takes long enough to be caught.
CRASH_USERS = 200_000
POLL_S = 0.02
IDLE_KILL_S = 120.0
CRASH_ATTEMPTS = 3


@dataclass(frozen=True)
class Registered:
    """Where the shared fixture put the events table and the model registry."""

    events: str
    registry_root: str

    def config(self, output_table: str, **spine: str) -> ScoreConfig:
        return ScoreConfig(
            model="m@production",
            registry_root=self.registry_root,
            output_table=output_table,
            spine=ScoringSpineConfig(**spine),
        )


@pytest.fixture(scope="module")
def registered(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    root = tmp_path_factory.mktemp("cluster-model")
    events = str(root / "events")
    write_table(generate_events(spark, SPEC), events)
    aggregates = WindowAggregates(
        sourceTable=events,
        windows=["7d", "30d"],
        filters={"purchase": "event_type = 'purchase'"},
        aggregations=[
            {"agg": "count"},
            {"agg": "count", "filter": "purchase"},
            {"agg": "count_distinct", "column": "session_id"},
        ],
    )
    recency = Recency(sourceTable=events)
    features = [*aggregates.outputColumns(), *recency.outputColumns()]
    config = ModelConfig(
        num_workers=1, early_stopping_rounds=None, params={"n_estimators": 20, "max_depth": 3}
    )
    # model_stages takes the params as an argument (ModelConfig.params is what the search
    # starts from), so pass them, or XGBoost grows its default 200 trees.
    (classifier,) = model_stages(config, features, config.params)
    assert classifier.getOrDefault("earlyStoppingRounds") == 0  # no early stopping
    spine = active_entity_spine(
        spark, events, [dt.date(2023, 3, 1), dt.date(2023, 3, 15)], lookback="30d"
    )
    labelled = add_labels(spine, events, horizon="30d", event_filter="event_type = 'purchase'")
    rows = labelled.select("user_id", "as_of", "label")
    model = Pipeline(stages=[aggregates, recency, classifier]).fit(rows)

    registry_root = str(root / "models")
    event_types = {f.name: f.dataType.simpleString() for f in read_table(spark, events).schema}
    card = make_card(events=events, lookback="30d", source_schema=event_types)
    registry = ModelRegistry(spark, registry_root)
    registry.register("m", model, card)
    registry.set_alias("m", "production", 1)
    return Registered(events=events, registry_root=registry_root)


def scores(spark: SparkSession, table: str) -> DataFrame:
    return read_table(spark, table).select(*COMPARED)


def parquet_files(table: Path) -> set[Path]:
    """The data files under a Delta table's directory (not its log, not checksum files)."""
    found: set[Path] = set()
    for directory, subdirs, files in os.walk(table):
        subdirs[:] = [d for d in subdirs if d != "_delta_log"]
        found.update(
            Path(directory, name)
            for name in files
            if name.endswith(".parquet") and not name.startswith((".", "_"))
        )
    return found


def commits(table: Path) -> set[str]:
    """The commit files of a Delta table's log."""
    return {path.name for path in (table / "_delta_log").glob("*.json")}


@dataclass(frozen=True)
class Attempt:
    """How a scoring run in a child process ended."""

    killed: bool
    new_files: frozenset[Path]
    returncode: int | None
    seconds: float


def run_and_kill(script: str, table: Path, log: Path, cwd: Path) -> Attempt:
    """Run ``script`` in a child Python process and SIGKILL its process group (the
    child and its JVM) as soon as a new data file appears under ``table``, or after
    ``IDLE_KILL_S`` without output. The child is always stopped on return."""
    before = parquet_files(table)
    started = time.monotonic()
    with log.open("wb") as out:
        child = subprocess.Popen(
            [PYTHON, "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        size, changed = 0, time.monotonic()
        while child.poll() is None:
            new = parquet_files(table) - before
            now = time.monotonic()
            if new or now - changed > IDLE_KILL_S:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return Attempt(True, frozenset(new), child.returncode, now - started)
            if (grown := log.stat().st_size) != size:
                size, changed = grown, now
            time.sleep(POLL_S)
        new = parquet_files(table) - before
        return Attempt(False, frozenset(new), child.returncode, time.monotonic() - started)
    finally:
        stop_process_groups([child])


@pytest.mark.slow
def test_spark_submit_on_a_standalone_cluster_scores_as_local_mode_does(
    spark: SparkSession, registered: Registered, tmp_path: Path
) -> None:
    # Executors start Python without .pth files (-S), so the editable install of this
    # checkout is invisible to them: only the --py-files zip provides sparkml_prod.
    executor_python = tmp_path / "executor-python"
    executor_python.write_text(f'#!/bin/sh\nexec {shlex.quote(PYTHON)} -S "$@"\n')
    executor_python.chmod(0o755)
    probe = subprocess.run(
        [str(executor_python), "-c", "import pyspark, xgboost, sparkml_prod"],
        env=clean_env(PYTHONPATH=SITE_PACKAGES),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "No module named 'sparkml_prod'" in probe.stderr, probe.stderr

    py_files = package_zip(tmp_path / "sparkml_prod.zip")
    config = tmp_path / "score.yaml"
    cluster_table = str(tmp_path / "scores_cluster")
    settings = {
        "model": "m@production",
        "registry_root": registered.registry_root,
        "output_table": cluster_table,
    }
    config.write_text(yaml.safe_dump(settings))
    workdir = tmp_path / "submit"
    workdir.mkdir()
    log = tmp_path / "spark-submit.log"
    # One worker with two cores: the executor is a JVM of its own, apart from the driver,
    # which is what the packaging needs; a second worker would only add two JVM starts.
    with standalone_cluster(tmp_path / "cluster", workers=1, cores=2, memory="1g") as master:
        command = [
            str(VENV_BIN / "spark-submit"),
            "--master",
            master,
            "--deploy-mode",
            "client",
            *delta_jar_args(),
            "--py-files",
            str(py_files),
            "--total-executor-cores",
            "2",
            "--executor-memory",
            "1g",
            "--driver-memory",
            "2g",
            "--driver-java-options",
            f"-Dlog4j2.configurationFile=file:{ROOT / 'conf' / 'log4j2.properties'}",
            "--conf",
            "spark.sql.shuffle.partitions=4",
            "--conf",
            f"spark.pyspark.python={executor_python}",
            "--conf",
            f"spark.pyspark.driver.python={PYTHON}",
            "--conf",
            f"spark.executorEnv.PYTHONPATH={SITE_PACKAGES}",
            str(ROOT / "jobs" / "score.py"),
            "--config",
            str(config),
            "--as-of",
            AS_OF.isoformat(),
        ]
        with log.open("wb") as out:
            submit = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=clean_env(PYSPARK_PYTHON=PYTHON, SPARK_LOCAL_IP="127.0.0.1"),
                start_new_session=True,
            )
        try:
            returncode: int | None = submit.wait(timeout=600)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            stop_process_groups([submit])
    outcome = "timed out after 600 s" if returncode is None else f"exited with {returncode}"
    assert returncode == 0, f"spark-submit {outcome}; last lines of {log}:\n{log_tail(log)}"
    # The job ran on the cluster: the worker launched an executor for it.
    worker_log = tmp_path / "cluster" / "worker-0.log"
    assert list((tmp_path / "cluster" / "worker-0").glob("app-*/*")), (
        f"worker-0 launched no executor; its log:\n{log_tail(worker_log)}"
    )

    run_scoring(spark, registered.config(str(tmp_path / "scores_local")), AS_OF)
    on_cluster = scores(spark, cluster_table)
    local = scores(spark, str(tmp_path / "scores_local"))
    assert on_cluster.count() > 100
    assert_approx_df_equality(on_cluster, local, 1e-9, ignore_row_order=True)


@pytest.mark.slow
def test_a_scoring_run_killed_while_writing_leaves_the_previous_content(
    spark: SparkSession, registered: Registered, tmp_path: Path
) -> None:
    users = str(tmp_path / "users")
    write_table(spark.range(CRASH_USERS).withColumnRenamed("id", "user_id"), users)
    table = tmp_path / "scores_crash"
    config = registered.config(str(table), users_table=users)
    # The previous content: an earlier run's partition of the same users (written
    # directly, in the scores table's schema: scoring it in-process would cost a run).
    earlier = spark.range(CRASH_USERS).select(
        F.col("id").alias("user_id"),
        F.lit(AS_OF).alias("as_of"),
        (F.col("id") % 1000 / 1000.0).alias("score"),
        F.lit("m").alias("model_name"),
        F.lit(1).alias("model_version"),
        F.lit("champion").alias("variant"),
        F.lit(False).alias("holdout"),
        F.timestamp_micros(F.lit(1_681_000_000_000_000)).alias("scored_at"),
        F.lit("earlier-run").alias("run_id"),
    )
    overwrite_partition(earlier, str(table), {"as_of": AS_OF})
    # The child shows Spark's progress bar, so silence means it hangs.
    script = textwrap.dedent(
        f"""
        import datetime, logging
        from sparkml_prod.core.config import ScoreConfig, ScoringSpineConfig
        from sparkml_prod.runs.score import run_scoring
        from sparkml_prod.core.session import get_spark
        logging.basicConfig(level=logging.INFO)
        spark = get_spark(master="local[2]", ui=False, conf={{
            "spark.driver.memory": "2g",
            "spark.sql.shuffle.partitions": "2",
            "spark.ui.showConsoleProgress": "true",
        }})
        run_scoring(spark, {config!r}, {AS_OF!r})
        """
    )
    log = tmp_path / "killed-run.log"
    attempts: list[Attempt] = []
    for number in range(1, CRASH_ATTEMPTS + 1):
        # The previous content, frozen in a copy outside the table (200k rows: no collect).
        previous = str(tmp_path / f"previous-{number}")
        read_table(spark, str(table)).write.parquet(previous)
        previous_commits = commits(table)
        attempt = run_and_kill(script, table, log, tmp_path)
        attempts.append(attempt)
        assert attempt.killed or attempt.returncode == 0, (
            f"The scoring run failed by itself (exit code {attempt.returncode}). Its log:\n"
            f"{log_tail(log)}"
        )
        # A run that committed before the kill landed is a complete new version, not a
        # crash mid-write: try again.
        if attempt.killed and commits(table) == previous_commits:
            break
    else:
        pytest.fail(
            f"In {CRASH_ATTEMPTS} attempts no scoring run was killed before its commit: "
            f"{attempts}. Last log:\n{log_tail(log)}"
        )
    assert attempt.new_files, (
        f"The run was killed after {IDLE_KILL_S:.0f} s without output, before it wrote any "
        f"data file. Its log:\n{log_tail(log)}"
    )

    # The half-written file is still there, and the table does not see it.
    after = read_table(spark, str(table))
    read = {Path(urlparse(uri).path) for uri in after.inputFiles()}
    assert attempt.new_files.isdisjoint(read)
    assert all(path.exists() for path in attempt.new_files)
    assert_df_equality(after, spark.read.parquet(previous), ignore_row_order=True)

    again = run_scoring(spark, config, AS_OF)
    partition = read_table(spark, str(table)).where(F.col("as_of") == F.lit(AS_OF))
    counts = partition.agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct("user_id").alias("users")
    ).first()
    assert counts is not None
    assert (counts["rows"], counts["users"], again.rows) == (CRASH_USERS,) * 3
    assert partition.where(F.col("run_id") == "earlier-run").count() == 0
