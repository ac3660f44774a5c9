"""Verified loading: file hashes, the stage class allowlist, and the refusal messages."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer, VectorAssembler
from pyspark.sql import DataFrame, SparkSession

from sparkml_prod.core.errors import ModelIntegrityError, SparkmlProdError
from sparkml_prod.modeling.stages import ProbabilityScore
from sparkml_prod.registry import (
    check_stage_classes,
    load_verified_pipeline,
    pipeline_file_hashes,
    verify_pipeline_files,
)

LABEL = "purchase_30d/3"
ALLOWLIST = "pyspark.ml.*, org.apache.spark.ml.*, xgboost.spark.*, sparkml_prod.*"
FILES_FIX = (
    "Re-register the model from training, or restore the model directory as registered "
    "(put back the changed and missing files, delete the unexpected ones)."
)


@pytest.fixture(scope="module")
def rows(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([(1.0, 0.25), (2.0, 0.75)], "a double, b double")


# Where the fixture pipeline keeps each stage's metadata (globs under the saved directory).
PIPELINE = "metadata/part-*"
SQL = "stages/0_SQLTransformer_*/metadata/part-*"
ASSEMBLER = "stages/1_PipelineModel_*/stages/0_VectorAssembler_*/metadata/part-*"
SCORE = "stages/2_ProbabilityScore_*/metadata/part-*"


@pytest.fixture(scope="module")
def model() -> PipelineModel:
    """A JVM stage, a nested all-JVM pipeline (saved by Spark's Scala writer) and one of
    ours (so the outer pipeline is saved by pyspark's Python writer)."""
    inner = PipelineModel([VectorAssembler(inputCols=["a", "b"], outputCol="probability")])
    return PipelineModel(
        [
            SQLTransformer(statement="SELECT *, a * 2 AS c FROM __THIS__"),
            inner,
            ProbabilityScore(inputCol="probability", outputCol="score"),
        ]
    )


@pytest.fixture(scope="module")
def saved(model: PipelineModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model"
    model.write().save(str(path))
    return path


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    """A private copy of the saved pipeline (checksum files included) to tamper with."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def sha256_of_files(root: Path) -> dict[str, str]:
    """The expected hashes, by os.walk and hashlib: every file but the .crc side files."""
    hashes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if not (name.startswith(".") and name.endswith(".crc")):
                path = Path(folder, name)
                hashes[path.relative_to(root).as_posix()] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return hashes


def metadata_file(root: Path, pattern: str) -> Path:
    """The one metadata part file matching ``pattern`` under ``root``."""
    (found,) = root.glob(pattern)
    return found


def stage_of(root: Path, metadata: Path) -> str:
    """The stage directory of a metadata file, relative to the saved pipeline."""
    return metadata.parent.parent.relative_to(root).as_posix()


def rewrite_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, separators=(",", ":")))


def refusal(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object]) -> str:
    """Run a check that must refuse; PipelineModel.load must not be reached."""

    def never(*args: object) -> None:
        raise AssertionError("PipelineModel.load was called")

    monkeypatch.setattr(PipelineModel, "load", never)
    with pytest.raises(ModelIntegrityError) as caught:
        run()
    assert isinstance(caught.value, SparkmlProdError)
    return str(caught.value)


# -- hashes --------------------------------------------------------------------------------


def test_hashes_cover_every_file_but_the_checksum_files(spark: SparkSession, copy: Path) -> None:
    hashes = pipeline_file_hashes(spark, str(copy))

    assert hashes == sha256_of_files(copy)
    assert list(hashes) == sorted(hashes)
    assert hashes["metadata/_SUCCESS"] == hashlib.sha256(b"").hexdigest()
    assert [p.name for p in copy.glob("metadata/.*.crc")] != []
    assert [k for k in hashes if k.endswith(".crc")] == []
    assert pipeline_file_hashes(spark, str(copy)) == hashes
    assert pipeline_file_hashes(spark, copy.as_uri()) == hashes

    target = metadata_file(copy, ASSEMBLER)
    data = bytearray(target.read_bytes())
    data[-2] ^= 1
    target.write_bytes(bytes(data))
    changed = pipeline_file_hashes(spark, str(copy))
    relative = target.relative_to(copy).as_posix()
    assert {k for k in hashes if changed[k] != hashes[k]} == {relative}
    assert changed[relative] == hashlib.sha256(bytes(data)).hexdigest()


def test_hashes_of_a_missing_directory_refuse(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        pipeline_file_hashes(spark, str(tmp_path / "absent"))
    assert str(caught.value) == (
        f"No saved pipeline at '{tmp_path}/absent': the directory holds no file (or does "
        "not exist). Save the model there first with PipelineModel.write().save()."
    )


# -- files as registered ----------------------------------------------------------------


def test_a_changed_file_refuses(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = sha256_of_files(copy)
    target = metadata_file(copy, SQL)
    relative = target.relative_to(copy).as_posix()
    target.write_text(target.read_text().replace("a * 2", "a * 3"))

    message = refusal(
        monkeypatch, lambda: load_verified_pipeline(spark, str(copy), expected, LABEL)
    )
    found = hashlib.sha256(target.read_bytes()).hexdigest()
    assert message == (
        f"Model 'purchase_30d/3' at '{copy}' does not match the files recorded when it was "
        "registered; nothing was loaded.\n"
        f"  changed: {relative} (expected sha256 {expected[relative]}, found sha256 {found})\n"
        f"{FILES_FIX}"
    )


def test_a_missing_file_refuses(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = sha256_of_files(copy)
    target = metadata_file(copy, SCORE)
    relative = target.relative_to(copy).as_posix()
    target.unlink()

    message = refusal(monkeypatch, lambda: verify_pipeline_files(spark, str(copy), expected, LABEL))
    assert message == (
        f"Model 'purchase_30d/3' at '{copy}' does not match the files recorded when it was "
        "registered; nothing was loaded.\n"
        f"  missing: {relative} (expected sha256 {expected[relative]}, found no file)\n"
        f"{FILES_FIX}"
    )


def test_an_unexpected_file_refuses(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = sha256_of_files(copy)
    # A second metadata record, which Spark's text source would read with the first.
    extra = metadata_file(copy, ASSEMBLER).parent / "part-00001.txt"
    extra.write_text('{"class":"mypkg.Evil"}\n')
    relative = extra.relative_to(copy).as_posix()

    message = refusal(
        monkeypatch, lambda: load_verified_pipeline(spark, str(copy), expected, LABEL)
    )
    found = hashlib.sha256(b'{"class":"mypkg.Evil"}\n').hexdigest()
    assert message == (
        f"Model 'purchase_30d/3' at '{copy}' does not match the files recorded when it was "
        "registered; nothing was loaded.\n"
        f"  unexpected: {relative} (expected no file, found sha256 {found})\n"
        f"{FILES_FIX}"
    )


# -- classes and metadata ----------------------------------------------------------------


def test_a_class_outside_the_allowlist_refuses_unless_allowed(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = metadata_file(copy, ASSEMBLER)  # inside the nested pipeline
    rewrite_json(target, lambda r: r.update({"class": "mypkg.Evil"}))
    expected = sha256_of_files(copy)  # registered like this: the hashes match
    stage = stage_of(copy, target)

    message = refusal(
        monkeypatch, lambda: load_verified_pipeline(spark, str(copy), expected, LABEL)
    )
    assert message == (
        f"Model 'purchase_30d/3': the stage in '{stage}' names class 'mypkg.Evil' "
        f"('{stage}/metadata/{target.name}'), which is not on the allowlist of loadable "
        f"classes: {ALLOWLIST}; nothing was loaded. PipelineModel.load would import that "
        "class and run its code. If the class is yours and trusted, add it (or its package "
        "prefix, ending in '.') to the configured allowlist (extra_allowed); otherwise "
        "re-register the model from training."
    )
    check_stage_classes(spark, str(copy), LABEL, extra_allowed=["mypkg.Evil"])
    check_stage_classes(spark, str(copy), LABEL, extra_allowed=["mypkg."])


def test_the_allowlist_names_the_configured_entries(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = metadata_file(copy, PIPELINE)
    rewrite_json(target, lambda r: r.update({"class": "builtins.eval"}))

    message = refusal(
        monkeypatch,
        lambda: check_stage_classes(spark, str(copy), LABEL, ["mypkg.", "other.Stage"]),
    )
    assert message == (
        "Model 'purchase_30d/3': the stage in '.' names class 'builtins.eval' "
        f"('metadata/{target.name}'), which is not on the allowlist of loadable classes: "
        f"{ALLOWLIST}, mypkg.*, other.Stage; nothing was loaded. PipelineModel.load would "
        "import that class and run its code. If the class is yours and trusted, add it (or "
        "its package prefix, ending in '.') to the configured allowlist (extra_allowed); "
        "otherwise re-register the model from training."
    )


def test_a_module_under_an_allowed_package_is_not_a_class(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = metadata_file(copy, SCORE)
    rewrite_json(target, lambda r: r.update({"class": "pyspark.ml.util.os"}))
    stage = stage_of(copy, target)

    message = refusal(monkeypatch, lambda: check_stage_classes(spark, str(copy), LABEL))
    assert message == (
        f"Model 'purchase_30d/3': the stage in '{stage}' names class 'pyspark.ml.util.os' "
        f"('{stage}/metadata/{target.name}'), which is not a class name: expected dotted "
        "identifiers ending in a capitalised class, e.g. 'pyspark.ml.feature.VectorAssembler'; "
        "nothing was loaded. PipelineModel.load would import whatever that name resolves "
        "to. Re-register the model from training."
    )


def test_a_stage_uid_that_leaves_the_model_refuses(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = metadata_file(copy, PIPELINE)
    rewrite_json(target, lambda r: r["paramMap"]["stageUids"].__setitem__(0, "../../../elsewhere"))

    message = refusal(monkeypatch, lambda: check_stage_classes(spark, str(copy), LABEL))
    assert message == (
        "Model 'purchase_30d/3': the pipeline in '.' lists stage 0 with uid "
        f"'../../../elsewhere' ('metadata/{target.name}'), which is not a plain name (a "
        "letter or digit, then letters, digits, '_', '.', '-'), so its directory could lie "
        "outside the model; nothing was loaded. Re-register the model from training."
    )


def test_metadata_with_two_records_refuses(
    spark: SparkSession, copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = metadata_file(copy, SQL)
    target.write_text(target.read_text().rstrip("\n") + '\n{"class":"mypkg.Evil"}\n')
    stage = stage_of(copy, target)

    message = refusal(monkeypatch, lambda: check_stage_classes(spark, str(copy), LABEL))
    assert message == (
        f"Model 'purchase_30d/3': the metadata of the stage in '{stage}' holds 2 records "
        f"('{stage}/metadata/{target.name}'), expected exactly one JSON line; nothing was "
        "loaded. Re-register the model from training."
    )


def test_extra_allowed_must_be_a_sequence_of_names(spark: SparkSession, saved: Path) -> None:
    with pytest.raises(ValueError) as caught:
        check_stage_classes(spark, str(saved), LABEL, extra_allowed="mypkg.")
    assert str(caught.value) == (
        "The 'extra_allowed' parameter of check_stage_classes must be a sequence of class "
        "names ('mypkg.stages.MyStage') or package prefixes ending in '.' ('mypkg.'). Got "
        "'mypkg.' instead."
    )


# -- loading -------------------------------------------------------------------------------


def test_a_clean_pipeline_loads_and_scores_like_the_fitted_one(
    spark: SparkSession, saved: Path, model: PipelineModel, rows: DataFrame
) -> None:
    hashes = pipeline_file_hashes(spark, str(saved))

    loaded = load_verified_pipeline(spark, str(saved), hashes, LABEL)

    assert_df_equality(loaded.transform(rows), model.transform(rows))
    expected = spark.createDataFrame(
        [(1.0, 2.0, 0.25), (2.0, 4.0, 0.75)], "a double, c double, score double"
    )
    assert_df_equality(loaded.transform(rows).select("a", "c", "score"), expected)


@pytest.mark.slow
def test_xgboost_callbacks_are_refused(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xgboost.callback import LearningRateScheduler
    from xgboost.spark import SparkXGBClassifier

    data = spark.createDataFrame(
        [(float(i % 2) + i / 100, float(i % 5), i % 2) for i in range(50)],
        "a double, b double, label int",
    )
    classifier = SparkXGBClassifier(
        features_col="features",
        label_col="label",
        num_workers=1,
        n_estimators=2,
        callbacks=[LearningRateScheduler([0.3, 0.3])],
    )
    stages = [VectorAssembler(inputCols=["a", "b"], outputCol="features"), classifier]
    fitted = Pipeline(stages=[*stages, ProbabilityScore()]).fit(data)
    fitted.write().save(str(tmp_path / "with"))

    # xgboost.spark's layout: the fitted model keeps the estimator's uid and callbacks,
    # cloudpickled into a top-level key of the stage metadata.
    target = metadata_file(tmp_path / "with", "stages/1_SparkXGBClassifier_*/metadata/part-*")
    record = json.loads(target.read_text())
    assert record["class"] == "xgboost.spark.estimator.SparkXGBClassifierModel"
    assert "serialized_callbacks" in record
    stage = stage_of(tmp_path / "with", target)

    message = refusal(
        monkeypatch, lambda: check_stage_classes(spark, str(tmp_path / "with"), LABEL)
    )
    assert message == (
        f"Model 'purchase_30d/3': the stage in '{stage}' (class "
        "'xgboost.spark.estimator.SparkXGBClassifierModel') carries 'serialized_callbacks' "
        f"in its metadata ('{stage}/metadata/{target.name}'). XGBoost callbacks are saved "
        "as pickled code (cloudpickle) that loading would run, so they are refused; nothing "
        "was loaded. Train the model without callbacks (drop 'callbacks' from the model "
        "params) and register it again."
    )

    # The same pipeline without callbacks: every class it names is allowed.
    booster = fitted.stages[1]
    booster.set(booster.getParam("callbacks"), None)
    fitted.write().save(str(tmp_path / "without"))
    check_stage_classes(spark, str(tmp_path / "without"), LABEL)
