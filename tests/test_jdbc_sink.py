"""Scores upserted into a real PostgreSQL table: exact rows, reruns, readers during the
swap, and writes interrupted at each step (sparkml_prod.sinks.jdbc).

One scoring run end to end (run_scoring with ``jdbc_sink``); the interruptions call
``upsert_scores`` on tiny frames, each step's hook raising or ending the connection.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cards import make_card
from postgres import Postgres
from pyspark.ml import Pipeline
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from session_packages import POSTGRES_JDBC
from standalone import log_tail, stop_process_groups
from submit import LOG4J2, PYTHON, ROOT, SPARK_SUBMIT, clean_env, package_zip

import sparkml_prod.runs.score as score_module
from sparkml_prod.core.config import JdbcSinkConfig, ScoreConfig, from_mapping
from sparkml_prod.core.errors import ConfigError, SinkError
from sparkml_prod.core.tables import read_table, write_table
from sparkml_prod.core.time import timestamp_lit
from sparkml_prod.features import WindowAggregates
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.runs.score import run_scoring
from sparkml_prod.sinks.jdbc import COLUMNS, ScoresSink, check_sink, upsert_scores

T = dt.datetime
A, B = dt.date(2024, 3, 10), dt.date(2024, 3, 20)
PASSWORD_ENV = "SPARKML_TEST_SCORES_DB_PASSWORD"
EVENTS = [
    (1, T(2024, 3, 9), "page_view", None),  # user 1: 2 events in the 7 days before A
    (1, T(2024, 3, 3), "purchase", 5.0),
    (2, T(2024, 3, 5), "page_view", None),  # user 2: 1 event before A
    (3, T(2024, 3, 15), "page_view", None),  # user 3: the only one active before B
]
# version 1: score = 1 / (1 + events in the 7 days before as-of); version 2 halves it
MODELS = (
    "SELECT *, 1.0D / (1.0D + event_count_7d) AS score FROM __THIS__",
    "SELECT *, 0.5D / (1.0D + event_count_7d) AS score FROM __THIS__",
)
# psql's text of the rows: user_id, as_of, score, model_name, model_version, variant, holdout
V1_AT_A = [
    ("1", "2024-03-10", "0.3333333333333333", "m", "1", "champion", "f"),
    ("2", "2024-03-10", "0.5", "m", "1", "champion", "f"),
]
V2_AT_A = [
    ("1", "2024-03-10", "0.16666666666666666", "m", "2", "champion", "f"),
    ("2", "2024-03-10", "0.25", "m", "2", "champion", "f"),
]
V1_AT_B = [("1", "2024-03-20", "0.5", "m", "1", "champion", "f")]  # written by `frame`


@pytest.fixture(scope="module")
def setup(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("jdbc_sink")
    events = str(root / "events")
    schema = "user_id long, event_time timestamp, event_type string, amount double"
    write_table(spark.createDataFrame(EVENTS, schema), events)
    spine = spark.createDataFrame([(1, T(2024, 3, 1))], "user_id long, as_of timestamp")
    registry = ModelRegistry(spark, str(root / "models"))
    card = make_card(events=events, lookback="7d")
    for sql in MODELS:
        stages = [
            WindowAggregates(sourceTable=events, windows=["7d"], aggregations=[{"agg": "count"}]),
            SQLTransformer(statement=sql),
        ]
        registry.register("m", Pipeline(stages=stages).fit(spine), card)
    registry.set_alias("m", "production", 1)
    return {"root": root, "registry": str(root / "models")}


@pytest.fixture
def password(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    return postgres.password


def config(
    setup: dict[str, Any], postgres: Postgres, table: str, model: str = "m@production"
) -> ScoreConfig:
    sink = JdbcSinkConfig(
        url=postgres.jdbc_url, table=table, user=postgres.user, password_env=PASSWORD_ENV
    )
    return ScoreConfig(
        model=model,
        registry_root=setup["registry"],
        output_table=str(setup["root"] / f"delta_{table}"),
        jdbc_sink=sink,
    )


def rows(postgres: Postgres, table: str) -> list[tuple[str | None, ...]]:
    return postgres.sql(
        "SELECT user_id, as_of, score, model_name, model_version, variant, holdout "
        f"FROM {table} ORDER BY as_of, user_id"
    )


def run_ids(postgres: Postgres, table: str) -> list[tuple[str | None, ...]]:
    return postgres.sql(f"SELECT DISTINCT as_of, run_id FROM {table} ORDER BY as_of")


def staging_tables(postgres: Postgres, table: str) -> list[tuple[str | None, ...]]:
    return postgres.sql(
        f"SELECT tablename FROM pg_tables WHERE tablename LIKE '{table}\\_\\_staging%' "
        "ORDER BY tablename"
    )


def with_step(monkeypatch: pytest.MonkeyPatch, on_step: Callable[[str], None]) -> None:
    """run_scoring's sink write calls ``on_step`` at each of its steps."""
    monkeypatch.setattr(
        score_module, "upsert_scores", functools.partial(upsert_scores, on_step=on_step)
    )


class Interrupted(Exception):
    pass


def test_config_errors_name_the_key_before_anything_runs(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = {"url": "jdbc:postgresql://db:5432/x", "table": "scores", "user": "u"}
    good["password_env"] = PASSWORD_ENV
    monkeypatch.delenv(PASSWORD_ENV, raising=False)

    def error(**changes: Any) -> str:
        section = from_mapping({**good, **changes}, JdbcSinkConfig, "score.yaml", "jdbc_sink")
        with pytest.raises(ConfigError) as caught:
            check_sink(section)
        return str(caught.value)

    assert error() == (
        f"jdbc_sink.password_env names ${PASSWORD_ENV}, which is not set (or empty): "
        "export the database password of user 'u' in it before the run."
    )
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    assert error(url="jdbc:mysql://db/x") == (
        "jdbc_sink.url must be a PostgreSQL JDBC URL (jdbc:postgresql://host:port/database), "
        "got 'jdbc:mysql://db/x'."
    )
    assert error(table="scores; DROP TABLE x").startswith(
        "jdbc_sink.table must be 'table' or 'schema.table', each a name of letters, digits "
        "and underscores not starting with a digit, the table at most 45 characters; got "
        "'scores; DROP TABLE x'."
    )
    assert "got 'a.b.c'" in error(table="a.b.c")
    assert error(batch_size=0) == "jdbc_sink.batch_size must be at least 1, got 0."
    with pytest.raises(ConfigError, match="unknown key 'jdbc_sink.password'"):
        from_mapping({**good, "password": "x"}, JdbcSinkConfig, "score.yaml", "jdbc_sink")
    assert check_sink(from_mapping({**good, "table": "Ops.Scores"}, JdbcSinkConfig)).table == (
        "ops.scores"
    )
    # run_scoring checks the section first: the missing registry is never reached.
    monkeypatch.delenv(PASSWORD_ENV)
    cfg = ScoreConfig(
        model="m@production",
        registry_root=str(tmp_path / "no-registry"),
        output_table=str(tmp_path / "out"),
        jdbc_sink=from_mapping(good, JdbcSinkConfig),
    )
    with pytest.raises(ConfigError, match=f"names \\${PASSWORD_ENV}, which is not set"):
        run_scoring(spark, cfg, A)


def test_rerun_of_a_date_replaces_its_rows_and_leaves_other_dates(
    spark: SparkSession,
    setup: dict[str, Any],
    postgres: Postgres,
    password: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config(setup, postgres, "scores_rerun")
    first = run_scoring(spark, cfg, A)
    assert first.sink_rows == 2
    assert rows(postgres, "scores_rerun") == V1_AT_A
    # another date, written straight through the sink (a scoring run less to pay for)
    upsert_scores(spark, sink_for(postgres, "scores_rerun"), frame(spark, B, [0.5], "run-b"), B, 1)
    assert rows(postgres, "scores_rerun") == V1_AT_A + V1_AT_B

    seen: dict[str, list[tuple[str | None, ...]]] = {}

    def read(step: str) -> None:  # another connection, while the swap is not committed
        seen[step] = rows(postgres, "scores_rerun")

    with_step(monkeypatch, read)
    rerun = run_scoring(spark, config(setup, postgres, "scores_rerun", model="m/2"), A)
    assert seen == {"staged": V1_AT_A + V1_AT_B, "swapped": V1_AT_A + V1_AT_B}
    assert rows(postgres, "scores_rerun") == V2_AT_A + V1_AT_B
    assert run_ids(postgres, "scores_rerun") == [
        ("2024-03-10", rerun.run_id),
        ("2024-03-20", "run-b"),
    ]
    # scored_at is the instant of the Delta rows (epoch microseconds on both sides)
    delta = (
        read_table(spark, cfg.output_table)
        .where(F.col("as_of") == F.lit(A))
        .select(F.unix_micros("scored_at").alias("us"))
        .distinct()
        .collect()
    )
    assert postgres.sql(
        "SELECT DISTINCT (extract(epoch FROM scored_at) * 1000000)::bigint FROM scores_rerun "
        "WHERE as_of = '2024-03-10'"
    ) == [(str(delta[0]["us"]),)]
    assert len(delta) == 1
    assert postgres.sql(
        "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "WHERE c.conrelid = 'scores_rerun'::regclass"
    ) == [("scores_rerun_pkey", "PRIMARY KEY (user_id, as_of)")]
    assert staging_tables(postgres, "scores_rerun") == []


def sink_for(postgres: Postgres, table: str) -> ScoresSink:
    return check_sink(
        JdbcSinkConfig(
            url=postgres.jdbc_url, table=table, user=postgres.user, password_env=PASSWORD_ENV
        )
    )


def frame(spark: SparkSession, as_of: dt.date, scores: list[float], run_id: str) -> DataFrame:
    """Scores of users 1, 2, ... at ``as_of``, scored at 09:30 UTC that day."""
    rows = [(i + 1, as_of, s, "m", 1, "champion", False, run_id) for i, s in enumerate(scores)]
    schema = (
        "user_id long, as_of date, score double, model_name string, model_version int, "
        "variant string, holdout boolean, run_id string"
    )
    at = dt.datetime(as_of.year, as_of.month, as_of.day, 9, 30, tzinfo=dt.timezone.utc)
    return spark.createDataFrame(rows, schema).withColumn("scored_at", timestamp_lit(at))


def scores(postgres: Postgres, table: str) -> list[tuple[str | None, ...]]:
    return postgres.sql(
        f"SELECT user_id, as_of, score, scored_at, run_id FROM {table} ORDER BY as_of, user_id"
    )


# what `scores` returns after the first upserts of the tests below
FIRST = [
    ("1", "2024-03-10", "0.25", "2024-03-10 09:30:00+00", "run-a"),
    ("2", "2024-03-10", "0.75", "2024-03-10 09:30:00+00", "run-a"),
    ("1", "2024-03-20", "0.5", "2024-03-20 09:30:00+00", "run-b"),
]


def first_upserts(spark: SparkSession, postgres: Postgres, table: str) -> ScoresSink:
    sink = sink_for(postgres, table)
    assert upsert_scores(spark, sink, frame(spark, A, [0.25, 0.75], "run-a"), A, 2) == 2
    assert upsert_scores(spark, sink, frame(spark, B, [0.5], "run-b"), B, 1) == 1
    assert scores(postgres, table) == FIRST
    return sink


@pytest.mark.parametrize("step", ["staged", "swapped"])
def test_a_write_interrupted_at_each_step_keeps_the_previous_rows(
    spark: SparkSession, postgres: Postgres, password: str, step: str
) -> None:
    table = f"scores_cut_{step}"
    sink = first_upserts(spark, postgres, table)
    seen: list[tuple[str, list[tuple[str | None, ...]]]] = []

    def interrupt(at: str) -> None:
        seen.append((at, scores(postgres, table)))  # a reader, on another connection
        if at == step:
            raise Interrupted(at)

    rerun = frame(spark, A, [0.5, 0.5, 0.5], "run-a2")  # a third user this time
    with pytest.raises(Interrupted):
        upsert_scores(spark, sink, rerun, A, 3, on_step=interrupt)
    # readers saw the previous rows at every step, and they are still there
    steps = ["staged"] if step == "staged" else ["staged", "swapped"]
    assert seen == [(at, FIRST) for at in steps]
    assert scores(postgres, table) == FIRST
    # the staging table is outside the rolled-back transaction: the next run replaces it
    assert staging_tables(postgres, table) == [(f"{table}__staging_20240310",)]

    assert upsert_scores(spark, sink, rerun, A, 3) == 3
    at = "2024-03-10 09:30:00+00"
    assert scores(postgres, table) == [
        ("1", "2024-03-10", "0.5", at, "run-a2"),
        ("2", "2024-03-10", "0.5", at, "run-a2"),
        ("3", "2024-03-10", "0.5", at, "run-a2"),
        FIRST[2],
    ]
    assert staging_tables(postgres, table) == []


def test_a_connection_lost_before_the_commit_rolls_back(
    spark: SparkSession, postgres: Postgres, password: str
) -> None:
    """The server ends the swapping session mid-transaction, as when the job is killed."""
    table = "scores_lost"
    sink = first_upserts(spark, postgres, table)

    def terminate(step: str) -> None:
        if step == "swapped":
            ended = postgres.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = "
                f"'{postgres.user}' AND state = 'idle in transaction'",
                superuser=True,
            )
            assert ended == [("t",)]

    with pytest.raises(SinkError) as caught:
        upsert_scores(spark, sink, frame(spark, A, [0.5], "run-a2"), A, 1, on_step=terminate)
    assert str(caught.value).startswith(
        f"Replacing the rows of 2024-03-10 in table '{table}' from "
        f"'{table}__staging_20240310' failed and was rolled back: "
    )
    assert str(caught.value).endswith(
        "The table keeps its previous rows for that date and the Delta scores partition is "
        "written; fix the cause and rerun the date."
    )
    assert scores(postgres, table) == FIRST


def test_a_staging_count_other_than_the_runs_is_not_committed(
    spark: SparkSession, postgres: Postgres, password: str
) -> None:
    table = "scores_count"
    sink = first_upserts(spark, postgres, table)
    with pytest.raises(SinkError) as caught:
        upsert_scores(spark, sink, frame(spark, A, [0.5], "run-a2"), A, 2)
    assert str(caught.value) == (
        f"Staging table '{table}__staging_20240310' holds 1 rows of 2024-03-10, but the run "
        f"wrote 2 to Delta, so table '{table}' was not changed. Another run of the same date "
        "may have written at the same time: rerun the date."
    )
    # staging rows of another run (one that replaced the staging table meanwhile)
    with pytest.raises(SinkError) as caught:
        upsert_scores(spark, sink, frame(spark, A, [0.5], "run-x"), A, 1, run_id="run-a2")
    assert str(caught.value).startswith(
        f"Staging table '{table}__staging_20240310' holds 0 rows of 2024-03-10 from run "
        "run-a2, but the run wrote 1 to Delta"
    )
    assert scores(postgres, table) == FIRST


def test_unreachable_database_fails_before_scoring(
    spark: SparkSession, setup: dict[str, Any], postgres: Postgres, password: str
) -> None:
    cfg = config(setup, postgres, "scores_unreachable")
    wrong = dataclasses.replace(cfg.jdbc_sink, user="nobody")  # type: ignore[type-var]
    cfg = dataclasses.replace(cfg, jdbc_sink=wrong)
    with pytest.raises(SinkError) as caught:
        run_scoring(spark, cfg, A)
    assert str(caught.value).startswith(
        f"Could not connect to {postgres.jdbc_url} as 'nobody' for table 'scores_unreachable': "
    )
    assert "password authentication failed for user" in str(caught.value)
    assert not Path(cfg.output_table).exists()  # nothing was scored


def test_a_target_without_the_score_columns_fails_before_scoring(
    spark: SparkSession, setup: dict[str, Any], postgres: Postgres, password: str
) -> None:
    postgres.sql("CREATE TABLE scores_other (user_id bigint, as_of date, score double precision)")
    cfg = config(setup, postgres, "scores_other")
    with pytest.raises(SinkError) as caught:
        run_scoring(spark, cfg, A)
    assert str(caught.value) == (
        f"Table 'scores_other' at {postgres.jdbc_url} lacks column(s) model_name, "
        "model_version, variant, holdout, scored_at, run_id of the scores; it has user_id, "
        "as_of, score. Point jdbc_sink.table at a new table (it is created) or add the columns."
    )
    assert not Path(cfg.output_table).exists()  # nothing was scored


@pytest.mark.slow
def test_a_submitted_job_killed_mid_swap_leaves_the_previous_rows(
    spark: SparkSession,
    setup: dict[str, Any],
    postgres: Postgres,
    password: str,
    tmp_path: Path,
) -> None:
    """``spark-submit jobs/score.py`` with the driver from ``python -m sparkml_prod.core.jars``,
    SIGKILLed while its swap transaction waits on a lock the test holds on the target."""
    table = "scores_killed"
    upsert_scores(spark, sink_for(postgres, table), frame(spark, A, [0.25, 0.75], "run-a"), A, 2)
    cfg = config(setup, postgres, table, model="m/2")
    conf = tmp_path / "score.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "model": cfg.model,
                "registry_root": cfg.registry_root,
                "output_table": cfg.output_table,
                "jdbc_sink": dataclasses.asdict(cfg.jdbc_sink),  # type: ignore[call-overload]
            }
        )
    )
    jars = subprocess.run(
        [PYTHON, "-m", "sparkml_prod.core.jars", POSTGRES_JDBC],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=clean_env(PYTHONPATH=str(ROOT)),
    ).stdout.strip()
    # Holds the target's lock: the job's DELETE waits inside its open transaction.
    holder = subprocess.Popen(
        [str(postgres.bin_dir / "psql"), "-X", "-q", "-At", "-h", postgres.host]
        + ["-p", str(postgres.port), "-U", postgres.user, "-d", postgres.database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
    )
    job: subprocess.Popen[bytes] | None = None
    log = tmp_path / "score.log"
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 1;\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "1\n"
        command = [str(SPARK_SUBMIT), "--master", "local[1]", "--jars", jars]
        command += ["--py-files", str(package_zip(tmp_path / "lib.zip"))]
        command += ["--driver-java-options", f"-Dlog4j2.configurationFile=file:{LOG4J2}"]
        command += ["--conf", "spark.sql.shuffle.partitions=2"]
        command += [str(ROOT / "jobs" / "score.py"), "--config", str(conf), "--as-of", str(A)]
        with log.open("wb") as out:
            job = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=clean_env(
                    PYSPARK_PYTHON=PYTHON,
                    PYSPARK_DRIVER_PYTHON=PYTHON,
                    **{PASSWORD_ENV: password},
                ),
                start_new_session=True,
            )
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE usename = "
            f"'{postgres.user}' AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM%'"
        )
        deadline = time.monotonic() + 600
        while postgres.sql(waiting, superuser=True) != [("1",)]:
            assert job.poll() is None, f"the job ended early:\n{log_tail(log)}"
            assert time.monotonic() < deadline, f"the job never reached the swap:\n{log_tail(log)}"
            time.sleep(0.5)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job is not None:
            stop_process_groups([job])
        holder.communicate("ROLLBACK;\n", timeout=60)
    # The killed client's session ends on the server (its DELETE rolled back) ...
    gone = f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{postgres.user}'"
    deadline = time.monotonic() + 120
    while postgres.sql(gone, superuser=True) != [("0",)]:
        assert time.monotonic() < deadline, "the killed job's database session never ended"
        time.sleep(0.2)
    # ... and leaves the seed rows, and its staging table for the next run to replace.
    assert scores(postgres, table) == FIRST[:2]
    assert staging_tables(postgres, table) == [(f"{table}__staging_20240310",)]

    rerun = run_scoring(spark, cfg, A)
    assert rows(postgres, table) == V2_AT_A
    assert run_ids(postgres, table) == [("2024-03-10", rerun.run_id)]
    assert staging_tables(postgres, table) == []


def test_the_target_table_has_the_scores_tables_columns_in_order() -> None:
    # The sink declares its table's columns next to their SQL types (it cannot import the
    # scoring job, which imports it): they must stay the scores table's, in its order.
    assert COLUMNS == score_module.OUTPUT_COLUMNS
