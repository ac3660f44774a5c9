"""What a user does, end to end: train a model, score the registered model with
``spark-submit`` from another directory (under a driver time zone that is not UTC),
rebuild its training matrix after new events arrived, and refuse a tampered model.

One small model is trained once for the module: window aggregates, a recency stage with
no lookback (all history), a point-in-time lookup and a categorical index, then XGBoost.
The training spine's lookback (30d) is shorter than the longest feature window (90d), so
the scoring population rule is visible in the scored user set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from chispa import assert_approx_df_equality, assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from standalone import log_tail
from submit import package_zip, submit_local

from sparkml_prod.cli import main
from sparkml_prod.core.config import MonitorConfig, ScoreConfig, TrainConfig, from_mapping
from sparkml_prod.core.errors import ModelIntegrityError, SourceVersionError
from sparkml_prod.core.tables import read_table, write_table
from sparkml_prod.data.synthetic import SyntheticSpec, generate_events, generate_user_attributes
from sparkml_prod.modeling.evaluation import evaluate
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.registry.card import CARD_FILE
from sparkml_prod.registry.loading import pipeline_file_hashes
from sparkml_prod.runs.monitor import MonitoringRun, run_monitoring
from sparkml_prod.runs.score import run_scoring
from sparkml_prod.runs.train import run_training

pytestmark = pytest.mark.slow

SPEC = SyntheticSpec(n_users=800, start=dt.date(2023, 1, 1), end=dt.date(2023, 8, 1), seed=5)
SCORE_AS_OF = dt.date(2023, 7, 20)
FEATURES = """
stages:
  - type: window_aggregates
    source: events
    windows: [7d, 90d]
    filters: {purchase: "event_type = 'purchase'"}
    aggregations: [{agg: count}, {agg: count, filter: purchase}]
  - type: recency
    source: events
    filters: {purchase: "event_type = 'purchase'"}
  - type: lookup
    source: user_attributes
    attributes: [plan]
  - type: categorical
    columns: [plan]
  - type: ratios
    ratios: {purchase_share_90d: [purchase_count_90d, event_count_90d]}
"""


@dataclasses.dataclass(frozen=True)
class Trained:
    root: Path
    events: str
    config: TrainConfig
    version: int


@pytest.fixture(scope="module")
def trained(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("end-to-end")
    tables = {"events": str(root / "events"), "user_attributes": str(root / "attributes")}
    write_table(generate_events(spark, SPEC), tables["events"])
    write_table(generate_user_attributes(spark, SPEC), tables["user_attributes"])
    (root / "features.yaml").write_text(FEATURES)
    settings = {
        "model_name": "m",
        "registry_root": str(root / "models"),
        "feature_spec": str(root / "features.yaml"),
        "sources": tables,
        "spine": {"source": "events", "lookback": "30d"},
        "label": {"source": "events", "filter": "event_type = 'purchase'", "horizon": "30d"},
        "split": {
            # Validation on held-out users of the training dates: no validation snapshot.
            "train": {"start": dt.date(2023, 3, 18), "end": dt.date(2023, 5, 1), "every": "14d"},
            "validation": {"entity_share": 0.25, "salt": "e2e"},
            "test": [dt.date(2023, 7, 1)],
        },
        "matrix_table": str(root / "matrix"),
        "report_dir": str(root / "report"),
        "model": {
            "num_workers": 1,
            "early_stopping_rounds": 5,
            "params": {"n_estimators": 30, "max_depth": 3},
        },
        "promote_to": "production",
    }
    config = from_mapping(settings, TrainConfig, source="end-to-end config")
    run = run_training(spark, config)
    assert run.promoted_to == "production"
    assert run.as_of_dates["validation"] == []
    # The registered model scores through BoosterScore with early stopping's trees: its
    # test metrics are the ones training measured with xgboost.spark's own stages.
    card = ModelRegistry(spark, config.registry_root).get("m@production").card
    test_spine = read_table(spark, config.matrix_table).where(F.col("split") == "test")
    registered = ModelRegistry(spark, config.registry_root).load("m@production")
    scored = evaluate(registered.transform(test_spine.select("user_id", "as_of", "label")))
    assert card.best_iteration is not None
    assert scored["roc_auc"] == pytest.approx(card.metrics["roc_auc"], rel=1e-12)
    assert scored["log_loss"] == pytest.approx(card.metrics["log_loss"], rel=1e-12)
    return Trained(root, tables["events"], config, run.version)


def active_users(spark: SparkSession, events: str, as_of: dt.date, days: int) -> DataFrame:
    """Users with an event in [as_of - days, as_of), computed here, not by the library."""
    end = dt.datetime(as_of.year, as_of.month, as_of.day, tzinfo=dt.timezone.utc)
    start = end - dt.timedelta(days=days)
    micros = F.unix_micros(F.col("event_time"))
    window = (micros >= int(start.timestamp() * 1e6)) & (micros < int(end.timestamp() * 1e6))
    return read_table(spark, events).where(window).select("user_id").distinct()


def score_config(trained: Trained, output: str, **extra: object) -> dict[str, object]:
    return {
        "model": "m@production",
        "registry_root": str(trained.root / "models"),
        "output_table": output,
        **extra,
    }


def test_the_registered_model_scores_its_training_population_with_spark_submit(
    spark: SparkSession, trained: Trained, tmp_path: Path
) -> None:
    config = tmp_path / "score.yaml"
    output = str(tmp_path / "scores")
    config.write_text(yaml.safe_dump(score_config(trained, output)))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    log = tmp_path / "submit.log"
    args = ["--config", str(config), "--as-of", SCORE_AS_OF.isoformat()]
    # East of UTC a naive as-of would land on the previous day's partition.
    code = submit_local(
        "score.py", args, workdir, log, package_zip(tmp_path / "lib.zip"), TZ="Asia/Tokyo"
    )
    assert code == 0, log_tail(log)

    scored = read_table(spark, output)
    # One partition, exactly the as-of date; the population is the training spine rule
    # (an event in the 30 days before as-of), not the 90-day feature window.
    assert_df_equality(
        scored.select(F.date_format("as_of", "yyyy-MM-dd").alias("d")).distinct(),
        spark.createDataFrame([(SCORE_AS_OF.isoformat(),)], "d string"),
        ignore_nullable=True,
    )
    expected_users = active_users(spark, trained.events, SCORE_AS_OF, 30)
    assert_df_equality(
        scored.select("user_id"), expected_users, ignore_row_order=True, ignore_nullable=True
    )
    wider = active_users(spark, trained.events, SCORE_AS_OF, 90).count()
    assert wider > expected_users.count() > 100  # the rule is what decides who is scored

    # The scores are those of the same model scored in this process.
    in_process = str(tmp_path / "scores_in_process")
    run_scoring(spark, from_mapping(score_config(trained, in_process), ScoreConfig), SCORE_AS_OF)
    columns = ["user_id", "as_of", "score", "model_name", "model_version", "variant"]
    assert_approx_df_equality(
        scored.select(*columns),
        read_table(spark, in_process).select(*columns),
        1e-9,
        ignore_row_order=True,
    )


def test_a_rebuild_after_new_events_equals_the_recorded_matrix_and_a_vacuumed_source_fails(
    spark: SparkSession, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Copy the sources so vacuuming here leaves the module's tables alone.
    events = str(tmp_path / "events")
    shutil.copytree(trained.events, events)
    registry_root = tmp_path / "models"
    shutil.copytree(trained.root / "models", registry_root)
    retarget(spark, registry_root, trained.events, events)

    later = generate_events(
        spark, dataclasses.replace(SPEC, start=dt.date(2023, 8, 1), end=dt.date(2023, 8, 15))
    )
    write_table(later, events, mode="append")
    rebuilt = str(tmp_path / "rebuilt")
    registry = ["--registry", str(registry_root)]
    assert main(["models", "rebuild", "m/1", *registry, "--output-table", rebuilt]) == 0
    card = ModelRegistry(spark, str(registry_root)).get("m/1").card
    assert capsys.readouterr().out.startswith(
        f"rebuilt the training matrix of m/1 into {rebuilt}: {card.matrix.rows:,} rows, "
        f"content hash {card.matrix.content_hash[:16]}, equal to the recorded one ("
    )
    recorded = spark.read.format("delta").option("versionAsOf", card.matrix.delta_version)
    assert_df_equality(
        read_table(spark, rebuilt),
        recorded.load(card.matrix.table).select(*read_table(spark, rebuilt).columns),
        ignore_row_order=True,
        ignore_nullable=True,
    )

    # The history the card pins is gone: overwritten, then vacuumed.
    write_table(later, events, mode="overwrite")
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        spark.sql(f"VACUUM delta.`{events}` RETAIN 0 HOURS")
    finally:
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "true")
    latest = DeltaTable.forPath(spark, events).history(1).head()["version"]
    assert main(["models", "rebuild", "m/1", *registry]) == 3
    message = capsys.readouterr().err
    assert message.startswith(
        f"sparkml-prod models: error: Table '{events}' version 0 can no longer be read "
        "exactly: its data file '"
    )
    assert message.endswith(
        "' was removed from the table after version 0 and has since been deleted (vacuumed). "
        f"The log still has versions 0..{latest}, but VACUUM deletes the files of replaced "
        "versions once they are older than its retention. To keep versions readable for "
        "rebuilds, set "
        "the table property delta.deletedFileRetentionDuration to a longer interval and never "
        "VACUUM with a shorter retention.\n"
    )
    with pytest.raises(SourceVersionError):
        main(["models", "rebuild", "m/1", *registry, "--debug"])


def retarget(spark: SparkSession, registry_root: Path, old: str, new: str) -> None:
    """Make the copied model name the copied table everywhere (its card and its stages'
    sources), as if it had been trained on the copy."""
    version_dir = registry_root / "m" / "1"
    for path in [version_dir / CARD_FILE, *version_dir.glob("model/**/metadata/part-*")]:
        rewrite(path, path.read_text().replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))
    rehash(spark, registry_root, version_dir / "model")


def copied_model(trained: Trained, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the registry, and the directory of the copied model's pipeline."""
    root = tmp_path / "models"
    shutil.copytree(trained.root / "models", root)
    return root, root / "m" / "1" / "model"


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    path.with_name(f".{path.name}.crc").unlink(missing_ok=True)


def stage_metadata(model_dir: Path, class_suffix: str) -> Path:
    (found,) = [
        p
        for p in model_dir.glob("stages/*/metadata/part-*")
        if json.loads(p.read_text())["class"].endswith(class_suffix)
    ]
    return found


def rehash(spark: SparkSession, root: Path, model_dir: Path) -> None:
    """Record the model's current file hashes in its card, as an attacker with write
    access could: only the class allowlist then stands in the way."""
    card_path = root / "m" / "1" / CARD_FILE
    card = json.loads(card_path.read_text())
    card["pipeline_sha256"] = pipeline_file_hashes(spark, str(model_dir))
    rewrite(card_path, json.dumps(card))


@pytest.fixture(scope="module")
def served(spark: SparkSession, trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A scores table the untampered model wrote: what a tampered model must not touch."""
    output = str(tmp_path_factory.mktemp("served") / "scores")
    run_scoring(spark, from_mapping(score_config(trained, output), ScoreConfig), SCORE_AS_OF)
    return output


def refused(spark: SparkSession, trained: Trained, root: Path, tmp_path: Path, served: str) -> str:
    """The ModelIntegrityError of scoring with the tampered model into a copy of the served
    scores table; the table is left exactly as it was."""
    output = str(tmp_path / "scores")
    shutil.copytree(served, output)
    before = read_table(spark, output).collect()
    config = from_mapping(score_config(trained, output, registry_root=str(root)), ScoreConfig)
    with pytest.raises(ModelIntegrityError) as raised:
        run_scoring(spark, config, SCORE_AS_OF)
    after = read_table(spark, output)
    assert_df_equality(after, spark.createDataFrame(before, after.schema), ignore_row_order=True)
    return str(raised.value)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_file_refuses_to_load(
    spark: SparkSession, trained: Trained, tmp_path: Path, served: str
) -> None:
    root, model_dir = copied_model(trained, tmp_path)
    params = stage_metadata(model_dir, ".WindowAggregates")
    registered = sha256(params)
    rewrite(params, params.read_text().replace('"7d"', '"8d"'))
    assert refused(spark, trained, root, tmp_path, served) == (
        f"Model 'm/1' at '{model_dir}' does not match the files recorded when it was "
        "registered; nothing was loaded.\n"
        f"  changed: {params.relative_to(model_dir).as_posix()} (expected sha256 "
        f"{registered}, found sha256 {sha256(params)})\n"
        "Re-register the model from training, or restore the model directory as registered "
        "(put back the changed and missing files, delete the unexpected ones)."
    )


def test_a_stage_class_outside_the_allowlist_refuses_to_load(
    spark: SparkSession, trained: Trained, tmp_path: Path, served: str
) -> None:
    root, model_dir = copied_model(trained, tmp_path)
    params = stage_metadata(model_dir, ".Recency")
    metadata = json.loads(params.read_text())
    metadata["class"] = "evil.payload.Recency"
    rewrite(params, json.dumps(metadata))
    rehash(spark, root, model_dir)
    stage = params.parent.parent.relative_to(model_dir).as_posix()
    assert refused(spark, trained, root, tmp_path, served) == (
        f"Model 'm/1': the stage in '{stage}' names class 'evil.payload.Recency' "
        f"('{params.relative_to(model_dir).as_posix()}'), which is not on the allowlist of "
        "loadable classes: pyspark.ml.*, org.apache.spark.ml.*, xgboost.spark.*, "
        "sparkml_prod.*; nothing was loaded. PipelineModel.load would import that class "
        "and run its code. If the class is yours and trusted, add it (or its package "
        "prefix, ending in '.') to the configured allowlist (extra_allowed); otherwise "
        "re-register the model from training."
    )


def test_monitoring_finds_the_injected_drift_and_evaluates_the_first_date_once_labelled(
    spark: SparkSession, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = dt.date(2023, 6, 20), SCORE_AS_OF  # labels of the second are not complete
    tables = {name: str(tmp_path / name) for name in ("scores", "features", "history", "events")}
    # Drift: from July on every event happens twice, so the 7-day counts of the second date
    # double; the plan (a user attribute) is untouched.
    events = read_table(spark, trained.events)
    july = F.col("event_time") >= F.lit("2023-07-01 00:00:00").cast("timestamp")
    write_table(events.unionByName(events.where(july)), tables["events"])
    scoring = {
        "features_table": tables["features"],
        "holdout": {"share": 0.3, "salt": "e2e"},
    }
    for day, sources in ((first, {}), (second, {trained.events: tables["events"]})):
        config = score_config(trained, tables["scores"], sources=sources, **scoring)
        run_scoring(spark, from_mapping(config, ScoreConfig), day)
    settings = {
        "model_name": "m",
        "registry_root": str(trained.root / "models"),
        "scores_table": tables["scores"],
        "features_table": tables["features"],
        "history_table": tables["history"],
        "dashboard_dir": str(tmp_path / "dashboard"),
    }
    monitor = from_mapping(settings, MonitorConfig)
    early = run_monitoring(spark, monitor, first)
    late = run_monitoring(spark, monitor, second)

    def status(run: MonitoringRun, metric: str, feature: str | None, day: dt.date) -> str:
        (found,) = [
            r for r in run.records if (r.metric, r.feature, r.as_of) == (metric, feature, day)
        ]
        return found.status

    assert status(early, "psi", "event_count_7d", first) == "ok"
    assert status(late, "psi", "event_count_7d", second) == "alert"
    assert status(late, "psi", "plan_index", second) == "ok"
    # The first date's labels were complete at its own run; the second's are pending.
    assert status(early, "roc_auc", None, first) == "ok"
    assert [r.as_of for r in late.records if r.metric == "roc_auc"] == [second]
    (pending,) = [r for r in late.records if r.metric == "roc_auc"]
    assert (pending.status, json.loads(pending.detail or "{}")["evaluable_on"]) == (
        "pending",
        "2023-08-19",
    )
    assert any(r.metric == "uplift" and r.feature is None for r in early.records)

    # A rerun of a monitoring run replaces its rows: exactly one set per run id.
    history = read_table(spark, tables["history"])
    counts = {r["run_id"]: r["count"] for r in history.groupBy("run_id").count().collect()}
    run_monitoring(spark, monitor, second)
    # The first run's rerun evaluates its date again instead of dropping what it replaces.
    assert status(run_monitoring(spark, monitor, first), "roc_auc", None, first) == "ok"
    history = read_table(spark, tables["history"])
    assert {r["run_id"]: r["count"] for r in history.groupBy("run_id").count().collect()} == (
        counts
    )
    assert counts == {"m@2023-06-20": len(early.records), "m@2023-07-20": len(late.records)}

    # fail_on_alert: the job exits with the monitoring code and prints the alerts.
    config_file = tmp_path / "monitor.yaml"
    config_file.write_text(yaml.safe_dump({**settings, "fail_on_alert": True}))
    assert main(["monitor", "--config", str(config_file), "--as-of", str(second)]) == 7
    assert "event_count_7d" in capsys.readouterr().err
    assert main(["monitor", "report", "--config", str(config_file)]) == 0
    dashboard = capsys.readouterr().out.strip().removeprefix("dashboard: ")
    assert Path(dashboard).read_text().count("data:image/png;base64,") >= 4
