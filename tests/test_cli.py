"""The command line: models list / show / promote, and argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cards import make_card
from pyspark.ml import Pipeline
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import SparkSession

from sparkml_prod.cli import main
from sparkml_prod.registry import ModelRegistry


@pytest.fixture()
def registry_root(spark: SparkSession, tmp_path: Path) -> str:
    root = str(tmp_path / "models")
    frame = spark.createDataFrame([(1, 2.0)], "user_id long, x double")
    model = Pipeline(stages=[SQLTransformer(statement="SELECT *, x AS score FROM __THIS__")])
    registry = ModelRegistry(spark, root)
    for auc in (0.71, 0.74):
        registry.register("m", model.fit(frame), make_card(metrics={"roc_auc": auc}))
    registry.set_alias("m", "production", 1)
    return root


def test_models_list_show_and_promote(
    registry_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--registry", registry_root]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("== m\n")
    assert "production" in listing and "0.71" in listing and "0.74" in listing

    assert main(["models", "promote", "m", "--version", "2", "--registry", registry_root]) == 0
    assert capsys.readouterr().out == "production -> m/2\n"

    assert main(["models", "show", "m@production", "--registry", registry_root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["version"], shown["metrics"]) == ("m", 2, {"roc_auc": 0.74})


def test_a_malformed_as_of_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--config", "conf/score.yaml", "--as-of", "2024-13-01"])
    assert exit_info.value.code == 2
    assert "--as-of must be a date YYYY-MM-DD, got '2024-13-01'" in capsys.readouterr().err


def test_a_library_error_is_one_line_and_its_exit_code(
    registry_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["models", "show", "m@staging", "--registry", registry_root])
    assert code == 6
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"sparkml-prod models: error: No alias 'staging' of model 'm' in registry "
        f"'{registry_root}' (ref 'm@staging'). Aliases present: production -> 1. Point it at "
        "a version with set_alias('m', 'staging', <version>) or promote().\n"
    )
    # --debug shows the traceback: the error itself propagates
    from sparkml_prod.core.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        main(["models", "show", "m@staging", "--registry", registry_root, "--debug"])


def test_a_config_error_exits_2_with_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "score.yaml"
    config.write_text("model: m@production\nregistry_root: /r\noutput_table: /o\nshow: 3\n")
    assert main(["score", "--config", str(config), "--as-of", "2024-06-01"]) == 2
    assert capsys.readouterr().err == (
        f"sparkml-prod score: error: {config}: unknown key 'show'; expected one of: "
        "allow_empty, allowed_stage_classes, challenger, features_table, holdout, jdbc_sink, "
        "mlflow, model, output_table, registry_root, sources, spine.\n"
    )
