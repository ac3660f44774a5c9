"""MLflow as an optional tracking server and registry: what training logs and registers,
the alias that follows promotion, and scoring ``models:/name@alias``.

MLflow runs embedded: a sqlite backend and an artifact directory under the test's temp
dir, no server. One tiny model is trained once for the module (promoted to
``production``: no holder yet); a second version is the same pipeline logged and
registered again as training does, to promote (and refuse) with ``models promote``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chispa import assert_df_equality
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession

from sparkml_prod.cli import main
from sparkml_prod.core.config import MlflowScoreConfig, ScoreConfig, TrainConfig, from_mapping
from sparkml_prod.core.errors import (
    ConfigError,
    ModelCardError,
    ModelIntegrityError,
    ModelNotFoundError,
)
from sparkml_prod.core.tables import read_table, table_exists, write_table
from sparkml_prod.data.synthetic import SyntheticSpec, generate_events
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.registry.card import CARD_FILE
from sparkml_prod.registry.mlflow_registry import MlflowTrainingRun, load_mlflow_model
from sparkml_prod.runs import promotion
from sparkml_prod.runs.score import run_scoring
from sparkml_prod.runs.train import run_training

pytestmark = pytest.mark.slow  # trains a model for the module

SPEC = SyntheticSpec(n_users=300, start=dt.date(2023, 1, 1), end=dt.date(2023, 8, 1), seed=5)
SCORE_AS_OF = dt.date(2023, 7, 20)
FEATURES = """
stages:
  - type: window_aggregates
    source: events
    windows: [7d, 30d]
    filters: {purchase: "event_type = 'purchase'"}
    aggregations: [{agg: count}, {agg: count, filter: purchase}]
"""
SCORE_COLUMNS = ("user_id", "as_of", "score", "model_name", "model_version", "variant")


@dataclasses.dataclass(frozen=True)
class Trained:
    root: Path
    tracking_uri: str
    config: TrainConfig
    config_file: Path


def train_settings(root: Path, tracking_uri: str) -> dict[str, Any]:
    return {
        "model_name": "m",
        "registry_root": str(root / "models"),
        "feature_spec": str(root / "features.yaml"),
        "sources": {"events": str(root / "events")},
        "spine": {"source": "events", "lookback": "30d"},
        "label": {"source": "events", "filter": "event_type = 'purchase'", "horizon": "30d"},
        "split": {
            "train": [dt.date(2023, 4, 1), dt.date(2023, 5, 1)],
            "validation": {"entity_share": 0.25, "salt": "mlflow"},
            "test": [dt.date(2023, 7, 1)],
        },
        "matrix_table": str(root / "matrix"),
        "report_dir": str(root / "report"),
        "model": {
            "num_workers": 1,
            "early_stopping_rounds": None,
            "params": {"n_estimators": 3, "max_depth": 2},
        },
        "promote_to": "production",
        "mlflow": {
            "tracking_uri": tracking_uri,
            "experiment": "purchases",
            "run_name": "first",
            "artifact_location": (root / "mlflow-artifacts").as_uri(),
            "dfs_tmpdir": str(root / "mlflow-dfs-tmp"),
        },
    }


@pytest.fixture(scope="module")
def trained(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Version 1 trained (and promoted: no holder yet), then the same pipeline logged and
    registered again as version 2 the way training does, without training again."""
    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    write_table(generate_events(spark, SPEC), str(root / "events"))
    (root / "features.yaml").write_text(FEATURES)
    settings = train_settings(root, tracking_uri)
    config = from_mapping(settings, TrainConfig, "train config")
    run = run_training(spark, config)
    assert (run.version, run.promoted_to) == (1, "production")

    registry = ModelRegistry(spark, config.registry_root)
    first = registry.get("m/1")
    pipeline = registry.load_version(first)
    assert config.mlflow is not None
    second = MlflowTrainingRun(dataclasses.replace(config.mlflow, run_name="second"), "m")
    second.start(config, first.card, config.report_dir)
    card = dataclasses.replace(first.card, mlflow=second.log_model(spark, pipeline, first.card))
    second.log_card(registry.register("m", pipeline, card, report_dir=config.report_dir))
    second.end(failed=False)

    config_file = root / "train.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    return Trained(root, tracking_uri, config, config_file)


def client(trained: Trained) -> Any:
    return MlflowClient(trained.tracking_uri, trained.tracking_uri)


def registry(spark: SparkSession, trained: Trained) -> ModelRegistry:
    return ModelRegistry(spark, trained.config.registry_root)


def test_training_logs_params_metrics_report_and_card_to_the_run(
    spark: SparkSession, trained: Trained
) -> None:
    version = registry(spark, trained).get("m/1")
    card = version.card
    assert card.mlflow is not None and card.mlflow.model_version == 1
    run = client(trained).get_run(card.mlflow.run_id)
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert run.info.experiment_id == card.mlflow.experiment_id
    assert run.data.params == {
        "model_type": "xgboost",
        "model.n_estimators": "3",
        "model.max_depth": "2",
        "feature_spec": str(trained.root / "features.yaml"),
        "features": "event_count_7d,event_count_30d,purchase_count_7d,purchase_count_30d",
        "label.filter": "event_type = 'purchase'",
        "label.horizon": "30d",
        "spine.lookback": "30d",
        "split.train": "2023-04-01,2023-05-01",
        "split.validation": "",
        "split.test": "2023-07-01",
        "deployed.fit": "selected",
    }
    # The card's test metrics, as the card (the source of truth) recorded them.
    assert set(card.metrics) == {"n", "base_rate", "roc_auc", "pr_auc", "log_loss", "brier"}
    assert run.data.metrics == {f"test_{k}": v for k, v in card.metrics.items()}
    assert run.data.tags["sparkml_prod.version"] == "1"
    assert run.data.tags["sparkml_prod.path"] == version.path

    logged = {a.path for a in client(trained).list_artifacts(run.info.run_id)}
    assert logged == {CARD_FILE, "features.yaml", "report", "model"}  # model: mlflow.spark's
    report = sorted(p.name for p in (trained.root / "report").iterdir())
    assert (
        sorted(Path(a.path).name for a in client(trained).list_artifacts(run.info.run_id, "report"))
        == report
    )
    # card.json in the run is byte for byte the directory registry's card.
    downloaded = client(trained).download_artifacts(
        run.info.run_id, CARD_FILE, str(trained.root / "downloaded-1")
    )
    assert Path(downloaded).read_text() == (Path(version.path) / CARD_FILE).read_text()


def test_the_pipeline_is_registered_under_the_same_name_with_the_logged_copys_hashes(
    spark: SparkSession, trained: Trained
) -> None:
    card = registry(spark, trained).get("m/1").card
    assert card.mlflow is not None
    model_version = client(trained).get_model_version("m", "1")
    assert model_version.run_id == card.mlflow.run_id
    assert model_version.tags == {
        "sparkml_prod.version": "1",
        "sparkml_prod.path": f"{trained.config.registry_root}/m/1",
    }
    # mlflow.spark saved the pipeline again: hash its sparkml/ here, independently.
    source = client(trained).get_model_version_download_uri("m", "1")
    sparkml = Path(source.removeprefix("file://")) / "sparkml"
    files = {
        p.relative_to(sparkml).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(sparkml.rglob("*"))
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".crc"))
    }
    assert card.mlflow.pipeline_sha256 == files
    # Not the directory registry's bytes: Spark names part files afresh on every save.
    assert set(files) != set(card.pipeline_sha256)
    assert len(files) == len(card.pipeline_sha256)


def test_the_alias_moves_on_promotion_and_not_on_a_refused_one(
    spark: SparkSession,
    trained: Trained,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Training promoted version 1: both registries' production point at it.
    assert dict(client(trained).get_registered_model("m").aliases) == {"production": 1}
    assert registry(spark, trained).aliases("m") == {"production": 1}
    versions = client(trained).search_model_versions("name='m'")
    assert sorted(int(v.version) for v in versions) == [1, 2]

    # The gate refuses version 2. Which verdict is not under test here (the gate has its
    # own tests), only that neither alias moves: a gate that always refuses.
    def refusing(*args: Any, **kwargs: Any) -> Any:
        return lambda candidate, current: (False, "the test's gate refuses")

    monkeypatch.setattr(promotion, "comparison_gate", refusing)
    promote = ["models", "promote", "m", "--version", "2", "--registry"]
    gated = [*promote, trained.config.registry_root, "--config", str(trained.config_file)]
    assert main(gated) == 5
    assert capsys.readouterr().err == (
        "sparkml-prod models: error: Promotion of model 'm' version 2 to alias 'production' "
        "refused: the test's gate refuses. The alias still points at version 1. Improve the "
        "candidate, or call set_alias to override the gate deliberately.\n"
    )
    assert dict(client(trained).get_registered_model("m").aliases) == {"production": 1}
    assert registry(spark, trained).aliases("m") == {"production": 1}
    # Moved without a gate, to another alias: MLflow's follows.
    try:
        assert main([*promote, trained.config.registry_root, "--alias", "challenger"]) == 0
        assert capsys.readouterr().out.splitlines()[-2:] == [
            "challenger -> m/2",
            "MLflow: challenger -> m/2",
        ]
        assert dict(client(trained).get_registered_model("m").aliases) == {
            "production": 1,
            "challenger": 2,
        }
        assert registry(spark, trained).aliases("m") == {"production": 1, "challenger": 2}
    finally:  # the other tests see the aliases training left
        client(trained).delete_registered_model_alias("m", "challenger")
        (Path(trained.config.registry_root) / "m" / "aliases" / "challenger").unlink()


def score_config(trained: Trained, model: str, output: str, **extra: Any) -> ScoreConfig:
    settings = {
        "model": model,
        "output_table": str(trained.root / output),
        "mlflow": {"tracking_uri": trained.tracking_uri},
        **extra,
    }
    return from_mapping(settings, ScoreConfig, source="score config")


def scores(spark: SparkSession, table: str) -> DataFrame:
    return read_table(spark, table).select(*SCORE_COLUMNS)


def test_scoring_an_mlflow_alias_gives_the_directory_versions_scores(
    spark: SparkSession, trained: Trained
) -> None:
    directory = score_config(
        trained, "m@production", "scores_dir", registry_root=trained.config.registry_root
    )
    run_scoring(spark, directory, SCORE_AS_OF)
    # Through a copy on the cluster's file system (dfs_tmpdir), removed once loaded.
    staging = trained.root / "score-dfs-tmp"
    settings = {"tracking_uri": trained.tracking_uri, "dfs_tmpdir": str(staging)}
    from_mlflow = score_config(trained, "models:/m@production", "scores_mlflow", mlflow=settings)
    run = run_scoring(spark, from_mlflow, SCORE_AS_OF)
    assert [p.name for p in staging.iterdir()] == []
    assert run.rows > 0 and run.by_variant == {"champion": run.rows}
    assert_df_equality(
        scores(spark, from_mlflow.output_table),
        scores(spark, directory.output_table),
        ignore_row_order=True,
    )
    # A version number resolves to the same version and card.
    by_number, _ = load_mlflow_model(
        spark, "models:/m/1", MlflowScoreConfig(tracking_uri=trained.tracking_uri)
    )
    assert by_number == dataclasses.replace(
        registry(spark, trained).get("m/1"), path="models:/m/1", has_report=False
    )


def test_unknown_models_aliases_and_versions_name_what_mlflow_holds(
    spark: SparkSession, trained: Trained
) -> None:
    uri = trained.tracking_uri
    cases = {
        "models:/nope@production": (
            f"No model 'nope' in the MLflow registry at '{uri}' (ref "
            "'models:/nope@production'). Train it with an mlflow section in the train "
            "config, or check the name and mlflow.tracking_uri / registry_uri."
        ),
        "models:/m@staging": (
            f"No alias 'staging' of model 'm' in the MLflow registry at '{uri}' (ref "
            "'models:/m@staging'); its aliases: production -> 1. Promote a version "
            "(promote_to in the train config) or name a version: models:/m/<version>."
        ),
        "models:/m/9": (
            f"No version 9 of model 'm' in the MLflow registry at '{uri}' (ref "
            "'models:/m/9'); its versions: 1, 2; its aliases: production -> 1."
        ),
    }
    for ref, message in cases.items():
        config = score_config(trained, ref, "never_written")
        with pytest.raises(ModelNotFoundError) as raised:
            run_scoring(spark, config, SCORE_AS_OF)
        assert str(raised.value) == message
    assert not table_exists(spark, str(trained.root / "never_written"))
    with pytest.raises(ConfigError) as bad:
        run_scoring(spark, score_config(trained, "models:/m", "never_written"), SCORE_AS_OF)
    assert str(bad.value) == (
        "model 'models:/m': model 'models:/m' is not an MLflow model ref: expected "
        "models:/<name>@<alias> or models:/<name>/<version>."
    )


@pytest.fixture
def restored(trained: Trained) -> Iterator[Path]:
    """Version 2's logged pipeline metadata file, put back as it was after the test."""
    source = client(trained).get_model_version_download_uri("m", "2")
    sparkml = Path(source.removeprefix("file://")) / "sparkml"
    (metadata,) = [p for p in (sparkml / "metadata").iterdir() if p.name.startswith("part-")]
    before = metadata.read_bytes()
    yield metadata
    metadata.write_bytes(before)


def test_a_changed_file_of_the_logged_copy_refuses_to_load(
    spark: SparkSession, trained: Trained, restored: Path
) -> None:
    card = registry(spark, trained).get("m/2").card
    assert card.mlflow is not None
    record = json.loads(restored.read_text())
    record["uid"] = "PipelineModel_tampered"
    restored.write_text(json.dumps(record))
    config = score_config(trained, "models:/m/2", "never_written_tampered")
    with pytest.raises(ModelIntegrityError) as raised:
        run_scoring(spark, config, SCORE_AS_OF)
    relative = f"metadata/{restored.name}"
    found = hashlib.sha256(restored.read_bytes()).hexdigest()
    message = str(raised.value)
    assert message.startswith("Model 'models:/m/2 (m/2)' at 'file:/")
    assert (
        f"  changed: {relative} (expected sha256 {card.mlflow.pipeline_sha256[relative]}, "
        f"found sha256 {found})"
    ) in message.splitlines()
    assert not table_exists(spark, config.output_table)


def test_a_version_logged_without_a_card_is_refused(spark: SparkSession, trained: Trained) -> None:
    mlflow_client = client(trained)
    other = mlflow_client.create_run(
        mlflow_client.get_experiment_by_name("purchases").experiment_id
    )
    mlflow_client.create_registered_model("bare")
    mlflow_client.create_model_version("bare", "file:///nowhere", run_id=other.info.run_id)
    with pytest.raises(ModelCardError) as raised:
        run_scoring(spark, score_config(trained, "models:/bare/1", "never_written"), SCORE_AS_OF)
    assert str(raised.value) == (
        f"The MLflow model 'models:/bare/1' (version 1) has no model card: its run "
        f"'{other.info.run_id}' holds no 'card.json'. Only models that sparkml-prod "
        "training registered (with an mlflow section) can be scored."
    )


def test_without_mlflow_installed_a_configured_mlflow_is_a_config_error(
    spark: SparkSession, trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    config = dataclasses.replace(
        trained.config, matrix_table=str(trained.root / "matrix_never"), promote_to=None
    )
    with pytest.raises(ConfigError) as raised:
        run_training(spark, config)
    assert str(raised.value) == (
        "model 'm': the train config's mlflow section needs MLflow, which is not installed: "
        "pip install 'sparkml-prod[mlflow]' (or drop the mlflow setting)."
    )
    assert not table_exists(spark, config.matrix_table)
    with pytest.raises(ConfigError) as scoring:
        run_scoring(spark, score_config(trained, "models:/m@production", "never"), SCORE_AS_OF)
    assert str(scoring.value) == (
        "model 'models:/m@production' needs MLflow, which is not installed: pip install "
        "'sparkml-prod[mlflow]' (or drop the mlflow setting)."
    )


def test_no_tracking_server_configured_is_a_config_error(
    spark: SparkSession, trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = from_mapping(
        {"model": "models:/m@production", "output_table": str(trained.root / "never")},
        ScoreConfig,
    )
    with pytest.raises(ConfigError) as raised:
        run_scoring(spark, config, SCORE_AS_OF)
    assert str(raised.value) == (
        "model 'models:/m@production': no MLflow tracking server: set mlflow.tracking_uri "
        "(e.g. sqlite:///mlflow.db or http://mlflow:5000) or the MLFLOW_TRACKING_URI "
        "environment variable."
    )


def test_the_library_imports_and_loads_its_commands_without_mlflow() -> None:
    code = (
        "import importlib.abc, sys\n"
        "class NoMlflow(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mlflow' or name.startswith('mlflow.'):\n"
        "            raise ImportError('no mlflow here')\n"
        "sys.meta_path.insert(0, NoMlflow())\n"
        "import sparkml_prod.cli, sparkml_prod.runs.train, sparkml_prod.runs.score\n"
        "import sparkml_prod.runs.retrain, sparkml_prod.registry.mlflow_registry\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mlflow']\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
