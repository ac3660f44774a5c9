from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import xgboost
from cards import make_card
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import SparkSession

from sparkml_prod.core.errors import ModelNotFoundError, PromotionRefusedError
from sparkml_prod.features import Recency
from sparkml_prod.modeling.booster_score import BoosterScore
from sparkml_prod.registry import ModelRegistry, ModelVersion, format_versions
from sparkml_prod.registry import storage as storage_module


@pytest.fixture(scope="module")
def model(spark: SparkSession) -> PipelineModel:
    df = spark.createDataFrame([(1,), (2,)], "x bigint")
    sql = SQLTransformer(statement="SELECT *, x * 2 AS y FROM __THIS__")
    return Pipeline(stages=[sql]).fit(df)


def _registry_with(spark: SparkSession, root: Path, model: PipelineModel, n: int) -> ModelRegistry:
    registry = ModelRegistry(spark, str(root))
    for i in range(1, n + 1):
        registry.register("m", model, make_card(params={"run": i}))
    return registry


def _hidden(directory: Path) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.startswith("."))


def test_register_numbers_versions_and_round_trips(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    registry = ModelRegistry(spark, str(tmp_path))
    card = make_card(metrics={"roc_auc": 0.81}, params={"run": 1})
    first = registry.register("m", model, card)
    registry.register("m", model, make_card(params={"run": 2}))
    registry.register("m", model, make_card(params={"run": 3}))

    assert first.version == 1
    assert first.path == f"{tmp_path}/m/1"
    assert first.model_path == f"{tmp_path}/m/1/model"
    assert first.report_path is None
    assert [v.version for v in registry.versions("m")] == [1, 2, 3]
    assert registry.names() == ["m"]
    assert registry.get("m").version == 3
    assert registry.get("m").card.params["run"] == 3

    stored = registry.get("m/1").card
    assert dt.datetime.fromisoformat(stored.created_at).utcoffset() == dt.timedelta(0)
    saved = tmp_path / "m" / "1" / "model"
    assert sorted(stored.pipeline_sha256) == sorted(
        f.relative_to(saved).as_posix()
        for f in saved.rglob("*")
        if f.is_file() and not f.name.endswith(".crc")
    )
    identity = {"name": "m", "version": 1, "created_at": stored.created_at}
    assert stored == dataclasses.replace(card, **identity, pipeline_sha256=stored.pipeline_sha256)
    on_disk = json.loads((tmp_path / "m" / "1" / "card.json").read_text())
    assert on_disk == dataclasses.asdict(stored) == dataclasses.asdict(first.card)

    scored = registry.load("m/1").transform(spark.createDataFrame([(1,), (3,)], "x bigint"))
    expected = spark.createDataFrame([(1, 2), (3, 6)], "x bigint, y bigint")
    assert_df_equality(scored, expected, ignore_row_order=True)
    assert _hidden(tmp_path / "m") == []


def test_register_copies_the_report_directory(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    report = tmp_path / "report"
    (report / "plots").mkdir(parents=True)
    (report / "report.html").write_text("<h1>churn</h1>")
    (report / "metrics.json").write_text('{"roc_auc": 0.8}')
    (report / "plots" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    registry = ModelRegistry(spark, str(tmp_path / "models"))

    version = registry.register("m", model, make_card(), report_dir=str(report))

    copied = tmp_path / "models" / "m" / "1" / "report"
    assert version.report_path == str(copied)
    assert registry.get("m").report_path == str(copied)
    assert (copied / "report.html").read_text() == "<h1>churn</h1>"
    assert (copied / "metrics.json").read_text() == '{"roc_auc": 0.8}'
    assert (copied / "plots" / "roc.png").read_bytes() == b"\x89PNG\r\n\x1a\n"

    missing = tmp_path / "no-report"
    with pytest.raises(FileNotFoundError) as info:
        registry.register("m", model, make_card(), report_dir=str(missing))
    assert str(info.value) == (
        f"Report directory '{missing}' of model 'm' does not exist or is not a directory. "
        "Write the report first, or pass report_dir=None."
    )
    assert [v.version for v in registry.versions("m")] == [1]


def test_register_rejects_bad_names_and_metadata(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    registry = ModelRegistry(spark, str(tmp_path))
    for bad in ["bad name", "-m", ".tmp-x", "a/b", ""]:
        with pytest.raises(ValueError) as info:
            registry.register(bad, model, make_card())
        assert str(info.value) == (
            f"The model name {bad!r} is not valid: it must start with a letter or digit and "
            "contain only letters, digits, '_', '.' and '-'. Rename it, e.g. 'churn_v2'."
        )
    with pytest.raises(ValueError, match="The model card of model 'm' is not JSON-serialisable"):
        registry.register("m", model, make_card(params={"when": dt.date(2024, 6, 1)}))
    assert os.listdir(tmp_path) == []
    assert registry.names() == []


def test_aliases_set_move_and_resolve(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    registry = _registry_with(spark, tmp_path, model, 2)
    alias_file = tmp_path / "m" / "aliases" / "production"

    registry.set_alias("m", "production", 1)
    first = json.loads(alias_file.read_text())
    assert {k: first[k] for k in ("version", "previous_version")} == {
        "version": 1,
        "previous_version": None,
    }
    assert dt.datetime.fromisoformat(first["updated_at"]).utcoffset() == dt.timedelta(0)

    registry.set_alias("m", "production", 2)
    moved = json.loads(alias_file.read_text())
    assert (moved["version"], moved["previous_version"]) == (2, 1)
    registry.set_alias("m", "challenger", 1)
    assert registry.aliases("m") == {"challenger": 1, "production": 2}
    assert registry.get("m@production").version == 2
    assert registry.get("m@challenger").card.params["run"] == 1
    # Only the alias files: no temp file, no checksum side file left behind.
    assert sorted(os.listdir(tmp_path / "m" / "aliases")) == ["challenger", "production"]

    before = alias_file.read_bytes()
    with pytest.raises(ModelNotFoundError) as info:
        registry.set_alias("m", "production", 9)
    assert str(info.value) == (
        f"No version 9 of model 'm' in registry '{tmp_path}' (ref 'm/9'). Versions present: "
        "1, 2. Use one of them, or 'm' for the latest."
    )
    assert alias_file.read_bytes() == before
    assert sorted(os.listdir(tmp_path / "m" / "aliases")) == ["challenger", "production"]


def test_alias_move_is_atomic_for_a_concurrent_reader(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    registry = _registry_with(spark, tmp_path, model, 2)
    registry.set_alias("m", "production", 1)
    alias_file = tmp_path / "m" / "aliases" / "production"
    seen: set[int] = set()
    failures: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(json.loads(alias_file.read_text())["version"])
            except (OSError, ValueError, KeyError) as error:
                failures.append(repr(error))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            registry.set_alias("m", "production", 2 if i % 2 == 0 else 1)
    finally:
        stop.set()
        reader.join()

    assert failures == []
    assert seen and seen <= {1, 2}
    assert json.loads(alias_file.read_text())["version"] == 1
    assert os.listdir(tmp_path / "m" / "aliases") == ["production"]


@pytest.mark.parametrize("strategy", ["file_context", "put", "delete_then_rename"])
def test_alias_moves_with_each_file_system_strategy(
    spark: SparkSession,
    tmp_path: Path,
    model: PipelineModel,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    # The HDFS (FileContext OVERWRITE), object store (one PUT) and fallback code paths,
    # exercised on local disk.
    registry = _registry_with(spark, tmp_path, model, 2)
    monkeypatch.setattr(storage_module, "_replace_strategy", lambda scheme: strategy)

    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "production", 2)

    record = json.loads((tmp_path / "m" / "aliases" / "production").read_text())
    assert (record["version"], record["previous_version"]) == (2, 1)
    assert registry.get("m@production").version == 2
    assert os.listdir(tmp_path / "m" / "aliases") == ["production"]


def test_unknown_name_version_alias_and_malformed_refs(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    registry = ModelRegistry(spark, str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        registry.get("m")
    assert str(info.value) == (
        f"No model 'm' in registry '{tmp_path}' (ref 'm'). The registry holds no models yet. "
        "Check the name, or register the model first."
    )

    _registry_with(spark, tmp_path, model, 2)
    registry.register("fraud", model, make_card())
    registry.set_alias("m", "challenger", 2)

    with pytest.raises(ModelNotFoundError) as info:
        registry.get("churn@production")
    assert str(info.value) == (
        f"No model 'churn' in registry '{tmp_path}' (ref 'churn@production'). Models in the "
        "registry: fraud, m. Check the name, or register the model first."
    )
    with pytest.raises(ModelNotFoundError) as info:
        registry.load("m/3")
    assert str(info.value) == (
        f"No version 3 of model 'm' in registry '{tmp_path}' (ref 'm/3'). Versions present: "
        "1, 2. Use one of them, or 'm' for the latest."
    )
    with pytest.raises(ModelNotFoundError) as info:
        registry.get("m@production")
    assert str(info.value) == (
        f"No alias 'production' of model 'm' in registry '{tmp_path}' (ref 'm@production'). "
        "Aliases present: challenger -> 2. Point it at a version with "
        "set_alias('m', 'production', <version>) or promote()."
    )
    with pytest.raises(ModelNotFoundError, match="Aliases present: none"):
        registry.get("fraud@production")
    with pytest.raises(ModelNotFoundError, match="No model 'churn'"):
        registry.versions("churn")
    with pytest.raises(ModelNotFoundError, match="No model 'churn'"):
        registry.aliases("churn")
    with pytest.raises(ValueError) as value_info:
        registry.get("m/latest")
    assert str(value_info.value) == (
        "The ref 'm/latest' is not valid: after '/' comes a version number from 1. "
        "Use e.g. 'm/1', 'm@production' or 'm'."
    )


def test_promote_consults_the_gate(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    registry = _registry_with(spark, tmp_path, model, 3)
    calls: list[tuple[int, int | None]] = []

    def refuse(candidate: ModelVersion, current: ModelVersion | None) -> tuple[bool, str]:
        calls.append((candidate.version, None if current is None else current.version))
        return False, "roc_auc gain +0.0010 is below the +0.0050 margin"

    def accept(candidate: ModelVersion, current: ModelVersion | None) -> tuple[bool, str]:
        calls.append((candidate.version, None if current is None else current.version))
        return True, "better"

    assert registry.promote("m", 1, gate=accept).version == 1
    with pytest.raises(PromotionRefusedError) as info:
        registry.promote("m", 2, gate=refuse)
    assert str(info.value) == (
        "Promotion of model 'm' version 2 to alias 'production' refused: roc_auc gain +0.0010 "
        "is below the +0.0050 margin. The alias still points at version 1. Improve the "
        "candidate, or call set_alias to override the gate deliberately."
    )
    assert registry.aliases("m") == {"production": 1}

    with pytest.raises(PromotionRefusedError, match="The alias stays unset"):
        registry.promote("m", 2, "challenger", gate=refuse)
    assert registry.aliases("m") == {"production": 1}

    promoted = registry.promote("m", 3, gate=accept)
    assert promoted == registry.get("m/3")
    assert registry.get("m@production").version == 3
    assert calls == [(1, None), (2, 1), (2, None), (3, 1)]
    record = json.loads((tmp_path / "m" / "aliases" / "production").read_text())
    assert (record["version"], record["previous_version"]) == (3, 1)

    assert registry.promote("m", 2, "challenger").version == 2
    assert registry.aliases("m") == {"challenger": 2, "production": 3}
    with pytest.raises(ModelNotFoundError, match="No version 7 of model 'm'"):
        registry.promote("m", 7, gate=accept)
    assert registry.aliases("m") == {"challenger": 2, "production": 3}


def test_leftover_temp_directory_is_ignored(
    spark: SparkSession, tmp_path: Path, model: PipelineModel
) -> None:
    registry = _registry_with(spark, tmp_path, model, 1)
    crashed = tmp_path / "m" / ".tmp-0123abcd"
    (crashed / "model" / "metadata").mkdir(parents=True)
    (crashed / "model" / "metadata" / "part-00000").write_text("{")
    (tmp_path / ".tmp-other").mkdir()

    assert [v.version for v in registry.versions("m")] == [1]
    assert registry.register("m", model, make_card(params={"run": 2})).version == 2
    assert [v.version for v in registry.versions("m")] == [1, 2]
    assert registry.names() == ["m"]
    # Another writer's temp directory may still be in use: it is left alone.
    assert _hidden(tmp_path / "m") == [".tmp-0123abcd"]


def test_failed_register_leaves_no_trace(
    spark: SparkSession, tmp_path: Path, model: PipelineModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry_with(spark, tmp_path, model, 1)
    report = tmp_path / "report"
    report.mkdir()

    def broken_copy(self: object, source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage_module.Storage, "copy_in", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        registry.register("m", model, make_card(), report_dir=str(report))

    assert [v.version for v in registry.versions("m")] == [1]
    assert _hidden(tmp_path / "m") == []


def test_register_takes_the_next_number_after_a_concurrent_register(
    spark: SparkSession, tmp_path: Path, model: PipelineModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry_with(spark, tmp_path, model, 2)
    # A stale listing: another process registered version 2 after this one looked.
    monkeypatch.setattr(registry, "_version_numbers", lambda name: [1])
    version = registry.register("m", model, make_card(params={"run": 3}))
    monkeypatch.undo()

    assert version.version == 3
    assert registry.get("m").card.version == 3
    assert registry.get("m/2").card.params["run"] == 2
    assert [v.version for v in registry.versions("m")] == [1, 2, 3]
    assert _hidden(tmp_path / "m") == []
    assert sorted(os.listdir(tmp_path / "m" / "2")) == [
        ".card.json.crc",
        "card.json",
        "model",
    ]


def test_file_uri_root(spark: SparkSession, tmp_path: Path, model: PipelineModel) -> None:
    root = tmp_path.as_uri()
    registry = ModelRegistry(spark, root + "/")
    version = registry.register("m", model, make_card(params={"run": 1}))
    registry.promote("m", version.version)

    assert registry.root == root
    assert version.path == f"{root}/m/1"
    assert registry.get("m@production") == version
    assert registry.names() == ["m"]
    scored = registry.load("m@production").transform(spark.createDataFrame([(5,)], "x bigint"))
    assert_df_equality(scored, spark.createDataFrame([(5, 10)], "x bigint, y bigint"))
    assert (tmp_path / "m" / "1" / "model").is_dir()
    assert os.listdir(tmp_path / "m" / "aliases") == ["production"]


def test_format_versions_table() -> None:
    versions = [
        ModelVersion(
            "churn",
            1,
            "/m/churn/1",
            make_card(
                created_at="2024-06-01T10:00:00+00:00",
                metrics={"roc_auc": 0.8, "log_loss": 0.41234},
            ),
        ),
        ModelVersion(
            "churn",
            2,
            "/m/churn/2",
            make_card(
                created_at="2024-06-02T10:00:00+00:00",
                metrics={"roc_auc": 0.834567, "pr_auc": 0.5, "accuracy": 0.9},
            ),
        ),
        ModelVersion("churn", 10, "/m/churn/10", make_card(created_at="2024-06-03T10:00:00+00:00")),
    ]
    table = format_versions(versions, {"production": 1, "shadow": 2, "challenger": 2})
    assert table.splitlines() == [
        "version  created_at                 aliases             roc_auc  pr_auc  log_loss",
        "      1  2024-06-01T10:00:00+00:00  production           0.8000       -    0.4123",
        "      2  2024-06-02T10:00:00+00:00  challenger, shadow   0.8346  0.5000         -",
        "     10  2024-06-03T10:00:00+00:00  -                         -       -         -",
    ]
    assert format_versions([], {}) == "(no versions)"
    no_metrics = [ModelVersion("m", 1, "/m/1", make_card(created_at="2024-06-01T10:00:00+00:00"))]
    assert format_versions(no_metrics, {}).splitlines() == [
        "version  created_at                 aliases",
        "      1  2024-06-01T10:00:00+00:00  -",
    ]


def test_loading_python_stages_runs_no_spark_job(spark: SparkSession, tmp_path: Path) -> None:
    # The checks read every stage's metadata; the load takes those lines instead of one
    # `spark.read.text` job per stage, and still rebuilds the same stages.
    x = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 0.0], [3.0, 1.0]])
    booster = xgboost.train(
        {"objective": "binary:logistic"}, xgboost.DMatrix(x, label=[0, 0, 1, 1]), 2
    )
    recency = Recency(sourceTable=str(tmp_path / "events"), outputPrefix="r_")
    score = BoosterScore.from_booster(booster, ["r_a", "r_b"], num_trees=2)
    registry = ModelRegistry(spark, str(tmp_path / "models"))
    registry.register("m", PipelineModel(stages=[recency, score]), make_card())

    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("load", "loading a registered model")
    try:
        loaded = registry.load("m/1")
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert tracker.getJobIdsForGroup("load") == []
    first, second = loaded.stages
    assert isinstance(first, Recency) and first.getOutputPrefix() == "r_"
    assert isinstance(second, BoosterScore) and second.getNumTrees() == 2
    assert second.getBooster().save_raw("json") == booster.save_raw("json")
