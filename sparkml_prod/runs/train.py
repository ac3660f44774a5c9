"""One training run, end to end: checks, matrix, search, evaluation, report, registration.

:func:`run_training` is everything ``sparkml-prod train`` (and ``jobs/train.py``) does.
Every check that needs no data comes first (:func:`plan_training`): the config, the time
split (no leakage), the model type, its params and the search space (each candidate is
constructed), the metric, the feature spec (its stages build and declare their outputs),
the backtest folds and the cluster's task slots. Then the checks that read a little: label
completeness and the sources' Delta versions, to which every later read is pinned; then
the split's row and class counts, before the features are computed.

The result is one registered version: the ``PipelineModel`` (feature stages + model
stages) and its :class:`~sparkml_prod.registry.card.ModelCard`. With ``refit`` the
registered model stages are the chosen params fitted again on every snapshot
(:mod:`sparkml_prod.modeling.refit`); the card's metrics, and the promotion gate, stay
those of the time-gapped fit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod._version import __version__
from sparkml_prod.core.config import HeldOutEntities, TrainConfig
from sparkml_prod.core.errors import ConfigError, PromotionRefusedError
from sparkml_prod.core.tables import is_path, table_path
from sparkml_prod.core.time import naive_utc, require_utc_session
from sparkml_prod.data.labels import check_labels_complete, labels_complete_until
from sparkml_prod.data.matrix import (
    SPLIT_COL,
    TrainingMatrix,
    build_training_matrix,
    source_ref,
    source_versions,
)
from sparkml_prod.data.spine import as_of_timestamps
from sparkml_prod.data.split import TimeSplit, check_held_out, check_time_split, resolve_split
from sparkml_prod.features import load_feature_spec
from sparkml_prod.features.spec import PipelineStage
from sparkml_prod.modeling.backtest import BacktestFold, plan_backtest, run_backtest
from sparkml_prod.modeling.refit import refit_all_snapshots, trees_used
from sparkml_prod.modeling.training import (
    SearchResult,
    check_model_config,
    check_model_resources,
    feature_importance,
    model_description,
    random_search,
)
from sparkml_prod.monitoring.profile import ReferenceProfile, reference_profile
from sparkml_prod.registry import ModelRegistry, ModelVersion
from sparkml_prod.registry.card import (
    CARD_SCHEMA_VERSION,
    DeployedModel,
    InputSchemas,
    LabelRule,
    MatrixRecord,
    ModelCard,
    SpineRule,
)
from sparkml_prod.registry.mlflow_registry import MlflowTrainingRun, follow_promotion
from sparkml_prod.runs.promotion import comparison_gate

__all__ = [
    "TrainingPlan",
    "TrainingRun",
    "absolute_tables",
    "plan_training",
    "run_training",
]

log = logging.getLogger("sparkml_prod.runs.train")

HEADLINE_METRICS = ("n", "base_rate", "roc_auc", "pr_auc", "log_loss", "brier")


@dataclass
class TrainingRun:
    """What a training run produced."""

    model_name: str
    version: int
    model_path: str
    report_path: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    promoted_to: str | None
    promotion_note: str | None
    as_of_dates: dict[str, list[str]]
    deployed: DeployedModel


@dataclass
class TrainingPlan:
    """What the checks without data established: dates, candidates, stages, folds."""

    split: TimeSplit
    dates: dict[str, list[dt.datetime]]
    candidates: list[dict[str, Any]]
    stages: list[PipelineStage]
    folds: list[BacktestFold]


def _dates_by_split(split: TimeSplit, backtest: Sequence[dt.date]) -> dict[str, list[dt.datetime]]:
    out = {
        "train": list(split.train),
        "validation": list(split.validation),
        "test": list(split.test),
    }
    present = set(split.all())
    extra = [d for d in as_of_timestamps(backtest) if d not in present]
    if extra:
        out["backtest"] = extra
    return out


def _check_config(config: TrainConfig) -> None:
    if config.label.kind != "binary":
        raise ConfigError(
            f"label.kind is '{config.label.kind}', but the model is a classifier: use "
            "label.kind: binary (count and sum labels are for regression features and analysis)."
        )
    business = (config.evaluation.value_per_true_positive, config.evaluation.cost_per_action)
    if (business[0] is None) != (business[1] is None):
        raise ConfigError(
            "evaluation.value_per_true_positive and evaluation.cost_per_action go together: "
            "set both or neither."
        )
    if isinstance(config.split.validation, HeldOutEntities):
        check_held_out(config.split.validation)
    elif not config.split.validation:
        raise ConfigError(
            "split.validation needs at least one as-of date (early stopping, search), or "
            "{entity_share: 0.2} to validate on a held-out share of the training entities."
        )


def absolute_tables(config: TrainConfig) -> TrainConfig:
    """The config with every table path made absolute (catalog names and URIs stay), so
    the model's stages and card name the same tables from any working directory."""
    absolute = lambda ref: table_path(ref) if is_path(ref) else ref  # noqa: E731
    return dataclasses.replace(
        config,
        sources={name: absolute(ref) for name, ref in config.sources.items()},
        matrix_table=absolute(config.matrix_table),
    )


def plan_training(spark: SparkSession, config: TrainConfig) -> TrainingPlan:
    """Every check of a training run that reads no data (no Spark job runs)."""
    require_utc_session(spark, "run_training")
    _check_config(config)
    split = resolve_split(config.split)
    check_time_split(split, config.label.horizon)
    dates = _dates_by_split(split, config.backtest.test)
    candidates = check_model_config(config.model, config.search)
    stages = load_feature_spec(config.feature_spec, sources=config.sources)
    snapshots = sorted({d for ds in dates.values() for d in ds})
    folds = plan_backtest(snapshots, as_of_timestamps(config.backtest.test), config.label.horizon)
    check_model_resources(spark, config.model)
    return TrainingPlan(split, dates, candidates, stages, folds)


def _versions() -> dict[str, str]:
    out = {"sparkml_prod": __version__}
    for package in ("pyspark", "xgboost-cpu", "xgboost", "delta-spark", "pandas", "pyarrow"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _show(dates: Sequence[dt.datetime]) -> list[str]:
    return [f"{d:%Y-%m-%d}" for d in dates]


def _card(
    config: TrainConfig,
    plan: TrainingPlan,
    built: TrainingMatrix,
    search: SearchResult,
    metrics: dict[str, Any],
    backtest: dict[str, Any] | None,
    complete_until: dt.datetime,
    timings: dict[str, float],
    profile: ReferenceProfile,
    deployed: DeployedModel,
    run_date: dt.date | None,
) -> ModelCard:
    """The card of the new version (the registry fills in its identity and file hashes)."""
    best = search.best
    return ModelCard(
        schema_version=CARD_SCHEMA_VERSION,
        name=config.model_name,
        version=0,
        created_at="",
        model_type=config.model.type,
        model_description=model_description(config.model, best.params),
        feature_names=built.feature_columns,
        categorical_features=built.categorical_columns,
        feature_stage_count=len(built.feature_model.stages),
        spine=SpineRule(
            source=source_ref(config, config.spine.source),
            lookback=config.spine.lookback,
            entity_col=config.spine.entity_col,
            timestamp_col=config.spine.timestamp_col,
            as_of_col="as_of",
        ),
        label=LabelRule(
            source=source_ref(config, config.label.source),
            filter=config.label.filter,
            horizon=config.label.horizon,
            kind=config.label.kind,
            value_col=config.label.value_col,
            entity_col=config.label.entity_col,
            timestamp_col=config.label.timestamp_col,
            complete_until=complete_until.replace(tzinfo=dt.timezone.utc).isoformat(),
        ),
        as_of_dates={name: _show(ds) for name, ds in plan.dates.items()},
        input_schema=InputSchemas(spine=built.spine_schema, sources=built.source_schemas),
        matrix=MatrixRecord(
            table=built.table,
            delta_version=built.version,
            rows=built.rows,
            content_hash=built.content_hash,
            source_versions=built.source_versions,
            rows_and_positives=built.counts,
        ),
        params=_jsonable(best.params),
        best_iteration=best.best_iteration,
        metrics={k: float(metrics[k]) for k in HEADLINE_METRICS},
        search=_jsonable({"metric": search.metric, "log": search.log}),
        backtest=_jsonable(backtest),
        library_versions=_versions(),
        training_config=_jsonable(dataclasses.asdict(config)),
        timings_s={k: round(v, 1) for k, v in timings.items()},
        reference_profile=profile.to_dict(),
        pipeline_sha256={},
        deployed=deployed,
        run_date=None if run_date is None else f"{run_date:%Y-%m-%d}",
        mlflow=None,
    )


def _deployed_fit(
    config: TrainConfig, plan: TrainingPlan, built: TrainingMatrix, best: Any, matrix: DataFrame
) -> tuple[PipelineModel, DeployedModel, DataFrame]:
    """The model stages to register, their record, and the rows they were fitted on: the
    search's best candidate as fitted, or with ``refit`` its params fitted on every
    snapshot (:mod:`sparkml_prod.modeling.refit`)."""
    trees = trees_used(config.model, best.params, best.best_iteration)
    if not config.refit:
        train_rows = built.counts.get("train", {}).get("rows", 0)
        selected = DeployedModel("selected", _show(plan.split.train), train_rows, trees)
        return best.model, selected, matrix.where(F.col(SPLIT_COL) == "train")
    refitted = refit_all_snapshots(
        matrix, config.model, best.params, best.best_iteration, built.feature_columns
    )
    snapshots = _show(sorted({d for dates in plan.dates.values() for d in dates}))
    return refitted, DeployedModel("refit", snapshots, built.rows, trees), matrix


def _promote(
    spark: SparkSession,
    config: TrainConfig,
    plan: TrainingPlan,
    built: TrainingMatrix,
    registry: ModelRegistry,
    version: ModelVersion,
    metrics: dict[str, Any],
    search: SearchResult,
) -> tuple[str | None, str | None]:
    """Move ``promote_to`` to the new version through the gate: (alias or None, note)."""
    if not config.promote_to:
        return None, None
    labelled_test = (
        built.read(spark)
        .where(F.col(SPLIT_COL) == "test")
        .select(config.spine.entity_col, "as_of", "label")
    )
    gate = comparison_gate(
        registry,
        labelled_test,
        float(metrics[search.metric]),
        search.metric,
        config.promotion_margin,
        candidate_fit="time-gapped fit, before its refit" if config.refit else None,
        test_dates=plan.split.test,
    )
    try:
        registry.promote(config.model_name, version.version, config.promote_to, gate=gate)
    except PromotionRefusedError as exc:
        log.warning("%s", exc)
        return None, str(exc)
    return config.promote_to, f"promoted to {config.promote_to}"


def run_training(
    spark: SparkSession, config: TrainConfig, run_date: dt.date | None = None
) -> TrainingRun:
    """Train, evaluate, report and register one model version (see the module docs).

    ``run_date``: the date a retrain counted the split back from (recorded on the card).
    """
    from sparkml_prod.modeling.evaluation import BusinessValue, evaluate, score_histogram
    from sparkml_prod.modeling.report import write_report

    timings: dict[str, float] = {}
    started = time.perf_counter()
    config = absolute_tables(config)
    plan = plan_training(spark, config)
    # MLflow installed and its tracking server named, before any data is read.
    tracking = MlflowTrainingRun(config.mlflow, config.model_name) if config.mlflow else None
    registry = ModelRegistry(spark, config.registry_root, config.allowed_stage_classes)
    # The versions every read of this run is pinned to, recorded before anything is read.
    versions = source_versions(
        spark,
        {
            **config.sources,
            "spine": source_ref(config, config.spine.source),
            "label": source_ref(config, config.label.source),
        },
    )
    label_source = source_ref(config, config.label.source)
    complete_until = (
        naive_utc(config.label.complete_until)
        if config.label.complete_until
        else labels_complete_until(
            spark,
            label_source,
            config.label.timestamp_col,
            source_version=versions.get(label_source),
        )
    )
    all_dates = sorted({d for ds in plan.dates.values() for d in ds})
    check_labels_complete(all_dates, config.label.horizon, complete_until, label_source)
    timings["checks_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    built = build_training_matrix(spark, config, plan.dates, plan.stages, versions)
    timings["matrix_s"] = time.perf_counter() - t0
    log.info(
        "training matrix %s (Delta version %d): %s; %d features",
        built.table,
        built.version,
        built.counts,
        len(built.feature_columns),
    )
    matrix = built.read(spark).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        t0 = time.perf_counter()
        search = random_search(
            matrix, config.model, config.search.metric, plan.candidates, built.feature_columns
        )
        timings["search_s"] = time.perf_counter() - t0
        best = search.best

        t0 = time.perf_counter()
        business = (
            BusinessValue(
                config.evaluation.value_per_true_positive, config.evaluation.cost_per_action
            )
            if config.evaluation.value_per_true_positive is not None
            and config.evaluation.cost_per_action is not None
            else None
        )
        test_rows = matrix.where(F.col(SPLIT_COL) == "test")
        metrics = evaluate(
            best.model.transform(test_rows),
            bins=config.evaluation.bins,
            calibration_bins=config.evaluation.calibration_bins,
            business=business,
        )
        train_histogram = score_histogram(
            best.model.transform(matrix.where(F.col(SPLIT_COL) == "train"))
        )
        backtest = (
            run_backtest(matrix, config.model, plan.folds, best.params, built.feature_columns)
            if plan.folds
            else None
        )
        timings["evaluation_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        deployed_stages, deployed, fit_rows = _deployed_fit(config, plan, built, best, matrix)
        if config.refit:
            timings["refit_s"] = time.perf_counter() - t0
        importance = feature_importance(deployed_stages, built.feature_columns)
        # What monitoring compares scoring runs with: the features as the deployed model
        # learnt them, its scores on the test snapshot.
        profile = reference_profile(
            fit_rows,
            [f for f in built.feature_columns if f not in built.categorical_columns],
            built.categorical_columns,
            scored=deployed_stages.transform(test_rows),
        )
    finally:
        matrix.unpersist()

    final = PipelineModel(stages=[*built.feature_model.stages, *deployed_stages.stages])
    card = _card(
        config,
        plan,
        built,
        search,
        metrics,
        backtest,
        complete_until,
        timings,
        profile,
        deployed,
        run_date,
    )
    extra: dict[str, object] = {
        "Data": {
            "as_of": card.as_of_dates,
            "horizon": config.label.horizon,
            "label_filter": config.label.filter,
            "rows_and_positives": built.counts,
            "matrix_table": built.table,
            "matrix_delta_version": built.version,
            "source_delta_versions": built.source_versions,
        },
        "Search log": search.log,
        "Deployed model": dataclasses.asdict(deployed),
    }
    if backtest:
        extra["Backtest"] = backtest
    report_path = write_report(
        config.report_dir,
        metrics,
        title=f"{config.model_name}: test snapshot {', '.join(_show(plan.split.test))}",
        model_description=card.model_description,
        train_histogram=train_histogram,
        feature_importance=importance,
        extra_sections=extra,
    )
    if tracking is None:
        version = registry.register(config.model_name, final, card, report_dir=config.report_dir)
        promoted, note = _promote(spark, config, plan, built, registry, version, metrics, search)
    else:
        tracking.start(config, card, config.report_dir)
        try:
            # MLflow first: the card the directory registry writes records the MLflow version.
            card = dataclasses.replace(card, mlflow=tracking.log_model(spark, final, card))
            version = registry.register(
                config.model_name, final, card, report_dir=config.report_dir
            )
            tracking.log_card(version)
            promoted, note = _promote(
                spark, config, plan, built, registry, version, metrics, search
            )
            if promoted:
                follow_promotion(version, promoted)
        except BaseException:
            tracking.end(failed=True)
            raise
        tracking.end(failed=False)
    timings["total_s"] = time.perf_counter() - started
    return TrainingRun(
        model_name=config.model_name,
        version=version.version,
        model_path=version.model_path,
        report_path=report_path,
        metrics=metrics,
        timings=timings,
        promoted_to=promoted,
        promotion_note=note,
        as_of_dates=card.as_of_dates,
        deployed=deployed,
    )
