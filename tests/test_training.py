"""Training end to end on generated data, and the checks that stop it before it starts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from spark_jobs import no_job_runs

from sparkml_prod.cli import main
from sparkml_prod.core.config import ModelConfig, TrainConfig, from_mapping
from sparkml_prod.core.errors import (
    ClusterCapacityError,
    ConfigError,
    LeakageError,
    TrainingDataError,
)
from sparkml_prod.core.tables import read_table, table_exists, write_table
from sparkml_prod.data.matrix import build_training_matrix, labelled_spine
from sparkml_prod.data.synthetic import (
    SyntheticSpec,
    generate_events,
    generate_user_attributes,
)
from sparkml_prod.features import load_feature_spec
from sparkml_prod.modeling.booster_score import BoosterScore
from sparkml_prod.modeling.evaluation import evaluate
from sparkml_prod.modeling.training import fit_candidate
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.registry.card import DeployedModel, SpineRule
from sparkml_prod.runs.promotion import comparison_gate
from sparkml_prod.runs.train import run_training

ROOT = Path(__file__).resolve().parent.parent
SPEC = SyntheticSpec(n_users=1500, start=dt.date(2023, 1, 1), end=dt.date(2023, 10, 1), seed=7)


@pytest.fixture(scope="module")
def tables(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("training-data")
    refs = {"events": str(root / "events"), "user_attributes": str(root / "user_attributes")}
    write_table(generate_events(spark, SPEC), refs["events"])
    write_table(generate_user_attributes(spark, SPEC), refs["user_attributes"])
    return refs


def train_config(tables: dict[str, str], root: Path, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "model_name": "purchase_30d",
        "registry_root": str(root / "models"),
        "feature_spec": str(ROOT / "conf" / "features.yaml"),
        "sources": tables,
        "spine": {"source": "events", "lookback": "90d"},
        "label": {"source": "events", "filter": "event_type = 'purchase'", "horizon": "30d"},
        "split": {
            "train": {"start": dt.date(2023, 3, 1), "end": dt.date(2023, 6, 15), "every": "14d"},
            "validation": [dt.date(2023, 7, 20)],
            "test": [dt.date(2023, 9, 1)],
        },
        "matrix_table": str(root / "matrix"),
        "report_dir": str(root / "report"),
        "model": {
            "num_workers": 1,
            "early_stopping_rounds": 10,
            "params": {"n_estimators": 150, "max_depth": 4, "learning_rate": 0.1},
        },
        "search": {"trials": 2, "seed": 3, "space": {"max_depth": {"int": [2, 5]}}},
        "evaluation": {"value_per_true_positive": 10.0, "cost_per_action": 1.0},
        "backtest": {"test": [dt.date(2023, 8, 20)]},
        "promote_to": "production",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return from_mapping(settings, TrainConfig, source="test config")


RUN_DATE = "2023-10-01"
RETRAIN = {
    "train": {"earliest": "132d", "latest": "90d", "every": "14d"},
    "validation": ["60d"],
    "test": ["30d"],
    "backtest": ["40d"],
}
TRAIN_DATES = ["2023-05-22", "2023-06-05", "2023-06-19", "2023-07-03"]


def write_config(tables: dict[str, str], root: Path, name: str, **overrides: Any) -> str:
    """A train config file as a user writes it (YAML), for the command line."""
    config = train_config(tables, root, **{"retrain": RETRAIN, **overrides})
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(config), default=str))))
    return str(path)


def scoring_stage(model: PipelineModel) -> BoosterScore:
    """The registered model's scoring stage: XGBoost scores through BoosterScore."""
    *_, last = model.stages
    assert isinstance(last, BoosterScore), model.stages
    return last


@pytest.mark.slow
def test_retrain_trains_on_the_run_dates_split_refits_and_gates_the_next_candidate(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The config's absolute split is stale; retrain counts its own back from the run date.
    refitting = write_config(tables, tmp_path, "refit", refit=True)
    assert main(["retrain", "--config", refitting, "--as-of", RUN_DATE]) == 0
    out = capsys.readouterr().out
    assert (
        "run date 2023-10-01: train 2023-05-22 .. 2023-07-03 (4 snapshots), validation "
        "2023-08-02, test 2023-09-01\n"
    ) in out
    assert "promotion: promoted to production\n" in out
    registry = ModelRegistry(spark, str(tmp_path / "models"))
    champion = registry.get("purchase_30d@production")
    card = champion.card
    assert (champion.version, card.run_date) == (1, RUN_DATE)
    assert card.as_of_dates == {
        "train": TRAIN_DATES,
        "validation": ["2023-08-02"],
        "test": ["2023-09-01"],
        "backtest": ["2023-08-22"],
    }

    # Honest evaluation: the model beats recency alone on the time-gapped test snapshot.
    matrix = read_table(spark, str(tmp_path / "matrix"), version=card.matrix.delta_version)
    test_rows = matrix.where(F.col("split") == "test")
    recency_only = evaluate(
        test_rows.select(
            "label",
            F.coalesce(1.0 / (1.0 + F.col("days_since_last_event")), F.lit(0.0)).alias("score"),
        )
    )
    assert card.metrics["roc_auc"] > recency_only["roc_auc"] + 0.03, (
        card.metrics["roc_auc"],
        recency_only["roc_auc"],
    )
    assert card.metrics["n"] == test_rows.count()
    assert (
        Path(card.training_config["report_dir"], "report.html")
        .read_text()
        .count("data:image/png;base64,")
        >= 6
    )
    assert card.matrix.delta_version == 0
    assert card.matrix.source_versions == {tables["events"]: 0, tables["user_attributes"]: 0}
    assert card.matrix.rows == matrix.count()
    assert card.input_schema.spine == {"user_id": "bigint", "as_of": "timestamp"}
    assert len(card.search["log"]) == 2
    assert [f["test_as_of"] for f in card.backtest["folds"]] == ["2023-08-22"]
    assert card.spine == SpineRule(tables["events"], "90d", "user_id", "event_time", "as_of")
    assert card.feature_stage_count == 5

    # The refit: every snapshot, every matrix row, as many trees as early stopping chose.
    chosen = max(card.search["log"], key=lambda t: t["validation"]["roc_auc"])
    assert card.best_iteration == chosen["best_iteration"] is not None
    assert card.deployed == DeployedModel(
        fit="refit",
        snapshots=[*TRAIN_DATES, "2023-08-02", "2023-08-22", "2023-09-01"],
        rows=card.matrix.rows,
        num_trees=card.best_iteration + 1,
    )
    deployed = registry.load_version(champion)
    assert len(deployed.stages) == card.feature_stage_count + 1
    stage = scoring_stage(deployed)
    assert stage.getBooster().num_boosted_rounds() == stage.getNumTrees() == card.best_iteration + 1
    assert stage.getFeatureCols() == card.feature_names
    # The card keeps the time-gapped judgement: the refit has seen the test snapshot's
    # labels, so it scores higher there than the metrics it was promoted on.
    labelled_test = test_rows.select("user_id", "as_of", "label").cache()
    champion_auc = evaluate(deployed.transform(labelled_test))["roc_auc"]
    assert champion_auc > card.metrics["roc_auc"] + 0.01, (champion_auc, card.metrics["roc_auc"])

    # A worse candidate of the same run date (the same test snapshot), with other feature
    # stages: registered, and refused by the gate.
    spec = tmp_path / "one_feature.yaml"
    spec.write_text(
        "stages:\n  - {type: window_aggregates, source: events, windows: [30d],"
        " aggregations: [{agg: count}]}\n"
    )
    weak = write_config(
        tables,
        tmp_path,
        "weak",
        feature_spec=str(spec),
        model={"early_stopping_rounds": None, "params": {"n_estimators": 2, "max_depth": 1}},
        search={"trials": 0},
        retrain={**RETRAIN, "backtest": []},
    )
    assert main(["retrain", "--config", weak, "--as-of", RUN_DATE]) == 0
    out = capsys.readouterr().out
    candidate = registry.get("purchase_30d/2").card
    assert (
        "promotion: Promotion of model 'purchase_30d' version 2 to alias 'production' "
        f"refused: test roc_auc: candidate purchase_30d/2 {candidate.metrics['roc_auc']:.4f}, "
        f"current purchase_30d/1 {champion_auc:.4f}, required margin 0.0; purchase_30d/1 was "
        "fitted on snapshot(s) 2023-08-22, 2023-09-01, whose 30d labels reach the test "
        "snapshot: its test metric is optimistic. The alias still points at version 1."
    ) in out
    assert registry.aliases("purchase_30d") == {"production": 1}
    assert (candidate.deployed.fit, candidate.deployed.num_trees) == ("selected", 2)
    assert scoring_stage(registry.load_version(registry.get("purchase_30d/2"))).getNumTrees() == 2
    # The same gate with a margin the candidate meets moves the alias.
    lenient = comparison_gate(
        registry, labelled_test, candidate.metrics["roc_auc"], "roc_auc", -1.0
    )
    registry.promote("purchase_30d", 2, "production", gate=lenient)
    assert registry.aliases("purchase_30d") == {"production": 2}


def test_linear_model_through_the_same_pipeline(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    # Recency is missing for users who never purchased: the Imputer fills it.
    spec = tmp_path / "features.yaml"
    spec.write_text(
        "stages:\n"
        "  - {type: window_aggregates, source: events, windows: [30d, 90d],"
        " aggregations: [{agg: count}]}\n"
        "  - {type: recency, source: events, filters: {purchase: \"event_type = 'purchase'\"}}\n"
    )
    config = train_config(
        tables,
        tmp_path,
        feature_spec=str(spec),
        model={
            "type": "pyspark.ml.classification.LogisticRegression",
            "standardize": True,
            "params": {"regParam": 0.01, "maxIter": 50},
        },
        split={"train": [dt.date(2023, 5, 1), dt.date(2023, 6, 1)]},
        search={"trials": 0},
        backtest={"test": []},
        promote_to=None,
    )
    run = run_training(spark, config)
    assert 0.6 < run.metrics["roc_auc"] < 1.0
    metrics = json.loads((Path(config.report_dir) / "metrics.json").read_text())
    assert metrics["roc_auc"] == run.metrics["roc_auc"]
    assert "LogisticRegression on standardised features" in Path(run.report_path).read_text()


def refusal(spark: SparkSession, config: TrainConfig, error: type[Exception]) -> str:
    """Message of the ``error`` that ``run_training`` raises, after checking that it wrote
    neither the training matrix nor the registry."""
    with pytest.raises(error) as raised:
        run_training(spark, config)
    assert not table_exists(spark, config.matrix_table)
    assert not Path(config.registry_root).exists()
    return str(raised.value)


def test_more_workers_than_slots_fails_before_any_data_is_read(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    config = train_config(tables, tmp_path, model={"num_workers": 3})
    assert refusal(spark, config, ClusterCapacityError) == (
        "model.num_workers is 3 but the Spark application (master local[2]) has only 2 task "
        "slot(s) with spark.task.cpus=1: XGBoost's barrier stage would wait and then fail. "
        "Set model.num_workers to at most 2, or give the application more executor cores."
    )


def test_test_labels_beyond_the_data_are_refused(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    split = {"test": [dt.date(2023, 9, 15)]}
    config = train_config(tables, tmp_path, split=split)
    assert refusal(spark, config, TrainingDataError) == (
        f"Labels of as-of 2023-09-15 are not complete yet: horizon 30d needs events until "
        f"2023-10-15, but source '{tables['events']}' is complete only until 2023-10-01. "
        "Use as-of dates no later than 2023-09-01."
    )


def test_a_leaking_split_is_refused(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    config = train_config(tables, tmp_path, split={"validation": [dt.date(2023, 7, 1)]})
    message = refusal(spark, config, LeakageError)
    assert re.search("training as-of 2023-06-07 .* validation as-of", message), message


def test_an_empty_spine_is_refused_before_features(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    # Before the data starts: nobody is active in the lookback of the training dates.
    split = {"train": [dt.date(2022, 6, 1)], "validation": [dt.date(2023, 7, 20)]}
    config = train_config(tables, tmp_path, split=split, backtest={"test": []})
    assert refusal(spark, config, TrainingDataError) == (
        "The train snapshot(s) at 2022-06-01 have no rows: no entity was active in the spine "
        "lookback before them. Check the dates against the events."
    )


def test_a_single_label_class_is_refused_before_features(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    label = {"filter": "event_type = 'no_such_event'"}
    config = train_config(tables, tmp_path, label=label, backtest={"test": []})
    message = refusal(spark, config, TrainingDataError)
    assert message.startswith("The train snapshot(s) at 2023-03-01, 2023-03-15, ")
    assert "have a single label class: all " in message
    assert message.endswith(
        " rows are 0 (negative). A classifier needs both; check the label filter and "
        "horizon, or choose other dates."
    )


def refused_before_any_job(spark: SparkSession, config: TrainConfig) -> str:
    """The message of the ConfigError that ``run_training`` raises before any Spark job
    (and so before writing anything)."""
    error = no_job_runs(spark, lambda: run_training(spark, config))
    assert isinstance(error, ConfigError), repr(error)
    assert not Path(config.matrix_table).exists()
    return str(error)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"search": {"metric": "accuracy"}},
            "search.metric must be one of roc_auc, pr_auc, log_loss; got 'accuracy'.",
        ),
        (
            {"model": {"type": "mypackage.models.Missing"}},
            "model.type 'mypackage.models.Missing' is neither 'xgboost' nor an importable class "
            "path such as pyspark.ml.classification.LogisticRegression.",
        ),
        (
            {"model": {"type": "pyspark.ml.feature.SQLTransformer"}},
            "model.type 'pyspark.ml.feature.SQLTransformer' is not a pyspark.ml Estimator.",
        ),
        (
            {"model": {"params": {"max_dept": 4}}},
            "model.params: 'max_dept' is not a parameter of XGBClassifier (did you mean "
            "max_depth?). Use the model's own parameter names, e.g. learning_rate, max_depth.",
        ),
        (
            {"model": {"params": {"n_jobs": 4}}},
            "model.params: 'n_jobs' is set by the library: the threads per worker are "
            "model.task_cpus.",
        ),
        (
            {
                "model": {
                    "type": "pyspark.ml.classification.LogisticRegression",
                    "params": {"regParm": 0.1},
                },
                "search": {"trials": 0},
            },
            "model.params do not fit pyspark.ml.classification.LogisticRegression: "
            "LogisticRegression.__init__() got an unexpected keyword argument 'regParm'",
        ),
        (
            {"search": {"space": {"depth": {"int": [2, 5]}}}},
            "search candidate 1 (model.params + space): 'depth' is not a parameter of "
            "XGBClassifier (did you mean max_depth?). Use the model's own parameter "
            "names, e.g. learning_rate, max_depth.",
        ),
        (
            {"search": {"space": {"max_depth": {"range": [2, 5]}}}},
            "search.space.max_depth: unknown kind 'range' (or a non-positive log_uniform "
            "bound); use int, uniform, log_uniform or choice.",
        ),
        (
            {"backtest": {"test": [dt.date(2023, 3, 20)]}},
            "backtest.test 2023-03-20: needs at least two earlier snapshots whose 30d label "
            "windows end before it (one trains, the latest validates); add earlier training "
            "dates or drop this fold.",
        ),
    ],
)
def test_model_search_and_backtest_settings_fail_before_any_job(
    spark: SparkSession,
    tables: dict[str, str],
    tmp_path: Path,
    overrides: dict[str, Any],
    message: str,
) -> None:
    config = train_config(tables, tmp_path, **overrides)
    assert refused_before_any_job(spark, config) == message


def test_a_feature_spec_whose_stages_do_not_build_fails_before_any_job(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "features.yaml"
    spec.write_text(
        "stages:\n"
        "  - {type: window_aggregates, source: events, windows: [7d, 1month],"
        " aggregations: [{agg: count}]}\n"
    )
    config = train_config(tables, tmp_path, feature_spec=str(spec))
    assert refused_before_any_job(spark, config) == (
        f"{spec}: stages[0] (window_aggregates): The 'windows' parameter of WindowAggregates "
        "must be a list of windows such as '7d', '12h' or '2w' (a positive integer and one "
        "of s, m, h, d, w). Got '1month' instead."
    )


def test_the_features_are_the_stages_declared_outputs_not_other_numeric_columns(
    spark: SparkSession, tables: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "features.yaml"
    spec.write_text(
        "stages:\n"
        "  - {type: window_aggregates, source: events, windows: [30d],"
        " aggregations: [{agg: count}]}\n"
        "  - {type: lookup, source: user_attributes, attributes: [plan]}\n"
        "  - {type: derived, expressions: {events_per_day_30d: 'event_count_30d / 30.0'}}\n"
        "  - {type: categorical, columns: [plan]}\n"
    )
    config = train_config(tables, tmp_path, feature_spec=str(spec))
    stages = load_feature_spec(spec, sources=tables)
    dates = {"train": [dt.datetime(2023, 5, 1)]}
    versions = {ref: 0 for ref in tables.values()}
    # A spine that carries a numeric helper column of its own: it must not become a feature.
    with_helper = labelled_spine(spark, config, dates, versions).withColumn("helper", F.lit(1.5))
    built = build_training_matrix(spark, config, dates, stages, versions, labelled=with_helper)
    assert "helper" in read_table(spark, config.matrix_table).columns
    assert built.feature_columns == ["event_count_30d", "events_per_day_30d", "plan_index"]
    assert built.categorical_columns == ["plan_index"]
    fitted = fit_candidate(
        built.read(spark),
        ModelConfig(num_workers=1, early_stopping_rounds=None, params={"n_estimators": 2}),
        built.feature_columns,
        {"n_estimators": 2},
    )
    (stage,) = fitted.stages
    assert stage.getFeatureCols() == ["event_count_30d", "events_per_day_30d", "plan_index"]
    assert stage.getBooster().feature_names == stage.getFeatureCols()


def test_the_model_description_says_what_trained_and_scores_the_model() -> None:
    import xgboost

    from sparkml_prod.modeling.training import model_description

    model = ModelConfig(num_workers=2, task_cpus=1, early_stopping_rounds=20)
    assert model_description(model, {"max_depth": 4, "learning_rate": 0.05}) == (
        f"XGBoost {xgboost.__version__} binary:logistic (trained by sparkml_prod "
        "BoosterClassifier: xgboost.train in Spark tasks on Arrow batches of the feature "
        "columns; scored by sparkml_prod BoosterScore): learning_rate=0.05, max_depth=4, "
        "num_workers=2, threads per worker=1, early_stopping_rounds=20"
    )
