"""Model training on the data matrix: the model stage, random search, early stopping.

The features are computed ONCE, into the training matrix (:mod:`sparkml_prod.data.matrix`).
Every candidate of the search trains on the matrix's training rows and is scored on its
validation snapshot; the best one is kept as fitted (no refit: with early stopping, the
validation snapshot chose its number of trees). The final artefact is one
``PipelineModel``: the fitted feature stages followed by the model stages, so
``model.transform(spine)`` on a raw ``(user_id, as_of)`` spine computes the features and
the score with no second copy of the feature logic.

Model stages:

* ``xgboost`` (default): :class:`~sparkml_prod.modeling.booster_train.BoosterClassifier`,
  ``xgboost.train`` in ``num_workers`` Spark tasks of ``task_cpus`` threads each, fed the
  feature columns as Arrow batches (no vector assembly); missing values (null, NaN) stay
  missing; early stopping on the validation snapshot. The rows are prepared (cast,
  partitioned, persisted) once per search, not once per candidate. A fit gives one
  :class:`~sparkml_prod.modeling.booster_score.BoosterScore` (the booster, its feature
  names for importance, the trees early stopping chose), which writes ``score``.
* any pyspark.ml classifier by class path (``LogisticRegression``,
  ``RandomForestClassifier``, ...): ``Imputer`` (training median; these models cannot take
  NaN) -> ``VectorAssembler`` -> optional ``StandardScaler`` -> the classifier ->
  :class:`~sparkml_prod.modeling.stages.ProbabilityScore`, which writes ``score``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml import Estimator, Pipeline, PipelineModel
from pyspark.ml.feature import Imputer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import ModelConfig, SearchConfig
from sparkml_prod.core.errors import ClusterCapacityError, ConfigError
from sparkml_prod.data.matrix import SPLIT_COL, VALIDATION_FLAG
from sparkml_prod.modeling.booster_score import BoosterScore
from sparkml_prod.modeling.booster_train import (
    DEFAULT_TREES,
    MANAGED_PARAMS,
    BoosterClassifier,
    TrainingRows,
    fit_booster,
    prepare_training_rows,
    xgboost_param_names,
)
from sparkml_prod.modeling.stages import ProbabilityScore

__all__ = [
    "Candidate",
    "DEFAULT_TREES",
    "SearchResult",
    "xgboost_training_rows",
    "check_model_resources",
    "task_slots",
    "model_stages",
    "fit_candidate",
    "random_search",
    "sample_params",
    "search_candidates",
    "check_model_config",
    "feature_importance",
    "model_description",
]

log = logging.getLogger("sparkml_prod.modeling.training")

METRICS_HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "log_loss": False}
FEATURES_VECTOR = "features"


def task_slots(spark: SparkSession) -> int:
    """Tasks the application can run at once: executor cores / ``spark.task.cpus``."""
    jsc = spark.sparkContext._jsc.sc()
    profile = jsc.resourceProfileManager().resourceProfileFromId(0)
    return int(jsc.maxNumConcurrentTasks(profile))


def check_model_resources(spark: SparkSession, model: ModelConfig) -> None:
    """Fail fast when XGBoost's barrier stage cannot get ``num_workers`` slots.

    Spark's barrier scheduling waits (minutes) before failing when the workers do not
    fit; this check answers in milliseconds, before any data is read.
    """
    if model.type != "xgboost":
        return
    if model.num_workers < 1:
        raise ConfigError(f"model.num_workers must be at least 1, got {model.num_workers}.")
    task_cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    if task_cpus != model.task_cpus:
        raise ConfigError(
            f"model.task_cpus is {model.task_cpus} but this Spark application runs with "
            f"spark.task.cpus={task_cpus}. Start it with --conf spark.task.cpus="
            f"{model.task_cpus} (the jobs do this in local mode), or change model.task_cpus."
        )
    slots = task_slots(spark)
    if model.num_workers > slots:
        master = spark.sparkContext.master
        raise ClusterCapacityError(
            f"model.num_workers is {model.num_workers} but the Spark application "
            f"(master {master}) has only {slots} task slot(s) with spark.task.cpus="
            f"{task_cpus}: XGBoost's barrier stage would wait and then fail. Set "
            f"model.num_workers to at most {slots}, or give the application more "
            "executor cores."
        )


def _model_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"model.type '{path}' is neither 'xgboost' nor an importable class path such as "
            "pyspark.ml.classification.LogisticRegression."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise ConfigError(f"model.type '{path}' is not a pyspark.ml Estimator.")
    return cls


def search_candidates(model: ModelConfig, search: SearchConfig) -> list[dict[str, Any]]:
    """The params of every search candidate, in trial order (seeded, so a rerun draws the
    same): candidate 0 is ``model.params`` as given, then ``trials - 1`` draws from
    ``search.space`` on top of them."""
    rng = random.Random(search.seed)
    candidates = [dict(model.params)]
    for _ in range(max(search.trials - 1, 0)):
        candidates.append({**model.params, **sample_params(search.space, rng)})
    return candidates


def check_model_config(model: ModelConfig, search: SearchConfig) -> list[dict[str, Any]]:
    """Check the model, its params, the search space and the metric without any data; return
    the candidates' params.

    The model type must import and be an Estimator; every candidate's params must build
    it (each key a Param of the model; for XGBoost an XGBClassifier parameter that the
    library does not set itself); ``search.metric`` must be known.
    """
    if search.metric not in METRICS_HIGHER_IS_BETTER:
        raise ConfigError(
            f"search.metric must be one of {', '.join(METRICS_HIGHER_IS_BETTER)}; "
            f"got '{search.metric}'."
        )
    if search.trials < 0:
        raise ConfigError(f"search.trials must be 0 or more, got {search.trials}.")
    if search.space and search.trials < 2:
        log.warning("search.space is set but search.trials is %d: no draw is made", search.trials)
    candidates = search_candidates(model, search)
    for index, params in enumerate(candidates):
        where = "model.params" if index == 0 else f"search candidate {index} (model.params + space)"
        if model.type == "xgboost":
            managed = sorted(k for k in params if k in MANAGED_PARAMS)
            if managed:
                raise ConfigError(
                    f"{where}: '{managed[0]}' is set by the library: {MANAGED_PARAMS[managed[0]]}."
                )
            known, name = xgboost_param_names(), "XGBClassifier"
        else:
            estimator = model_stages(model, ["__feature"], params)[-2]  # the classifier
            known, name = [p.name for p in estimator.params], type(estimator).__name__
        unknown = sorted(k for k in params if k not in known)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], known, n=1)
            raise ConfigError(
                f"{where}: '{unknown[0]}' is not a parameter of {name}"
                + (f" (did you mean {', '.join(hint)}?)" if hint else "")
                + ". Use the model's own parameter names, e.g. learning_rate, max_depth."
            )
    return candidates


def model_stages(
    model: ModelConfig,
    feature_columns: Sequence[str],
    params: Mapping[str, Any],
    label_col: str = "label",
) -> list[Any]:
    """The unfitted model stages of the pipeline (after the feature stages)."""
    features = list(feature_columns)
    if model.type == "xgboost":
        return [
            BoosterClassifier(
                featureCols=features,
                labelCol=label_col,
                validationCol=VALIDATION_FLAG if model.early_stopping_rounds else "",
                numWorkers=model.num_workers,
                nthread=model.task_cpus,
                earlyStoppingRounds=model.early_stopping_rounds or 0,
                xgboostParams=dict(params),
            )
        ]
    score = ProbabilityScore(inputCol="probability", outputCol="score")
    cls = _model_class(model.type)
    imputed = [f"{c}__imputed" for c in features]
    stages: list[Any] = [
        Imputer(inputCols=features, outputCols=imputed, strategy="median"),
    ]
    if model.standardize:
        stages += [
            VectorAssembler(inputCols=imputed, outputCol="__raw_features"),
            StandardScaler(inputCol="__raw_features", outputCol=FEATURES_VECTOR, withMean=True),
        ]
    else:
        stages.append(VectorAssembler(inputCols=imputed, outputCol=FEATURES_VECTOR))
    try:
        classifier = cls(featuresCol=FEATURES_VECTOR, labelCol=label_col, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.params do not fit {model.type}: {exc}") from None
    return [*stages, classifier, score]


def xgboost_training_rows(
    matrix: DataFrame, model: ModelConfig, feature_columns: Sequence[str], label_col: str = "label"
) -> TrainingRows:
    """The matrix's training rows (+ its validation rows, flagged, with early stopping)
    prepared for XGBoost: cast, partitioned over ``num_workers`` and persisted, once for
    every candidate fitted on them. Call ``release()`` when done."""
    split = F.col(SPLIT_COL)
    early = bool(model.early_stopping_rounds)
    rows = matrix.where(split.isin("train", "validation") if early else split == "train")
    return prepare_training_rows(
        rows.withColumn(VALIDATION_FLAG, split == "validation"),
        feature_columns,
        model.num_workers,
        label_col,
        VALIDATION_FLAG if early else None,
    )


def fit_candidate(
    matrix: DataFrame,
    model: ModelConfig,
    feature_columns: Sequence[str],
    params: Mapping[str, Any],
    label_col: str = "label",
    prepared: TrainingRows | None = None,
) -> PipelineModel:
    """Fit the model stages on the training rows (XGBoost: + validation for early stopping).

    XGBoost fits on ``prepared`` (:func:`xgboost_training_rows` of ``matrix``) when given,
    else prepares the rows for this fit alone.
    """
    if model.type == "xgboost":
        rows = prepared or xgboost_training_rows(matrix, model, feature_columns, label_col)
        try:
            stage = fit_booster(
                rows,
                params,
                nthread=model.task_cpus,
                early_stopping_rounds=model.early_stopping_rounds,
            )
        finally:
            if prepared is None:
                rows.release()
        return PipelineModel(stages=[stage])
    stages = model_stages(model, feature_columns, params, label_col)
    return Pipeline(stages=stages).fit(matrix.where(F.col(SPLIT_COL) == "train"))


def sample_params(space: Mapping[str, Mapping[str, Sequence[Any]]], rng: random.Random) -> dict:
    """One candidate from a search space (see :class:`~sparkml_prod.core.config.SearchConfig`)."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ConfigError(
                f"search.space.{name} must be one of {{int: [low, high]}}, {{uniform: [low, "
                f"high]}}, {{log_uniform: [low, high]}}, {{choice: [...]}}; got {spec!r}."
            )
        ((kind, values),) = spec.items()
        values = list(values)
        if kind == "choice" and values:
            out[name] = rng.choice(values)
            continue
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            raise ConfigError(f"search.space.{name}.{kind} must be [low, high]; got {values!r}.")
        low, high = values
        if kind == "int":
            out[name] = rng.randint(int(low), int(high))
        elif kind == "uniform":
            out[name] = rng.uniform(low, high)
        elif kind == "log_uniform" and low > 0 and high > 0:
            out[name] = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            raise ConfigError(
                f"search.space.{name}: unknown kind '{kind}' (or a non-positive log_uniform "
                "bound); use int, uniform, log_uniform or choice."
            )
    return out


@dataclass
class Candidate:
    """One fitted candidate of the search and its validation metrics."""

    trial: int
    params: dict[str, Any]
    model: PipelineModel
    metrics: dict[str, float]
    best_iteration: int | None
    fit_seconds: float

    def log_entry(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "params": self.params,
            "validation": self.metrics,
            "best_iteration": self.best_iteration,
            "fit_seconds": round(self.fit_seconds, 2),
        }


@dataclass
class SearchResult:
    best: Candidate
    log: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "roc_auc"


def best_iteration(model: PipelineModel) -> int | None:
    """The early-stopping iteration of an XGBoost model stage (None for other models)."""
    for stage in model.stages:
        if isinstance(stage, BoosterScore):
            booster = stage.getBooster()
            try:
                return int(booster.best_iteration)
            except AttributeError:
                return None
    return None


def validation_metrics(predictions: DataFrame, label_col: str = "label") -> dict[str, float]:
    """ROC AUC, PR AUC and log loss of a scored snapshot (computed in Spark)."""
    from sparkml_prod.modeling.evaluation import evaluate

    metrics = evaluate(predictions, label_col=label_col, score_col="score")
    return {k: float(metrics[k]) for k in ("roc_auc", "pr_auc", "log_loss")}


def random_search(
    matrix: DataFrame,
    model: ModelConfig,
    metric: str,
    candidates: Sequence[Mapping[str, Any]],
    feature_columns: Sequence[str],
    label_col: str = "label",
) -> SearchResult:
    """Fit each candidate (from :func:`check_model_config`) and keep the best on the
    validation snapshot by ``metric``; candidate 0 is the configured params, so a search
    can only improve on them."""
    validation = matrix.where(F.col(SPLIT_COL) == "validation")
    higher = METRICS_HIGHER_IS_BETTER[metric]
    best: Candidate | None = None
    entries = []
    started = time.perf_counter()
    prepared = (
        xgboost_training_rows(matrix, model, feature_columns, label_col)
        if model.type == "xgboost"
        else None
    )
    if prepared is not None:
        log.info(
            "XGBoost rows prepared in %.1fs: %d training, %d validation, %d worker(s)",
            time.perf_counter() - started,
            prepared.train_rows,
            prepared.validation_rows,
            prepared.num_workers,
        )
    try:
        for trial, params in enumerate(candidates):
            candidate = _fit_trial(
                matrix, validation, model, feature_columns, trial, params, label_col, prepared
            )
            entries.append(candidate.log_entry())
            value, current = candidate.metrics[metric], best.metrics[metric] if best else None
            if current is None or (value > current if higher else value < current):
                best = candidate
    finally:
        if prepared is not None:
            prepared.release()
    assert best is not None, "check_model_config gives at least one candidate"
    return SearchResult(best=best, log=entries, metric=metric)


def _fit_trial(
    matrix: DataFrame,
    validation: DataFrame,
    model: ModelConfig,
    feature_columns: Sequence[str],
    trial: int,
    params: Mapping[str, Any],
    label_col: str,
    prepared: TrainingRows | None,
) -> Candidate:
    started = time.perf_counter()
    fitted = fit_candidate(matrix, model, feature_columns, params, label_col, prepared)
    seconds = time.perf_counter() - started
    metrics = validation_metrics(fitted.transform(validation), label_col)
    candidate = Candidate(trial, dict(params), fitted, metrics, best_iteration(fitted), seconds)
    log.info(
        "trial %d: validation %s (best iteration %s, %.1fs) %s",
        trial,
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        candidate.best_iteration,
        seconds,
        params,
    )
    return candidate


def feature_importance(model: PipelineModel, feature_columns: Sequence[str]) -> dict[str, float]:
    """Importance per feature: XGBoost total gain, tree ensembles' importances, or the
    absolute coefficients of a linear model (on standardised features when configured)."""
    for stage in model.stages:
        if isinstance(stage, BoosterScore):
            scores = stage.getBooster().get_score(importance_type="total_gain")
            # one number per feature for a binary booster (a list only for vector leaves)
            return {name: float(scores.get(name, 0.0)) for name in feature_columns}  # type: ignore[arg-type]
        if hasattr(stage, "featureImportances"):
            values = stage.featureImportances.toArray()
            return {name: float(v) for name, v in zip(feature_columns, values, strict=True)}
        if hasattr(stage, "coefficients"):
            values = stage.coefficients.toArray()
            return {name: abs(float(v)) for name, v in zip(feature_columns, values, strict=True)}
    return {}


def model_description(model: ModelConfig, params: Mapping[str, Any]) -> str:
    """One line for the report and the metadata: which model, with which settings."""
    if model.type == "xgboost":
        import xgboost

        kind = (
            f"XGBoost {xgboost.__version__} binary:logistic (trained by sparkml_prod "
            "BoosterClassifier: xgboost.train in Spark tasks on Arrow batches of the feature "
            "columns; scored by sparkml_prod BoosterScore)"
        )
        extra = (
            f", num_workers={model.num_workers}, threads per worker={model.task_cpus}, "
            f"early_stopping_rounds={model.early_stopping_rounds}"
        )
    else:
        kind = model.type + (" on standardised features" if model.standardize else "")
        extra = ""
    shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
    return f"{kind}: {shown or 'default parameters'}{extra}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
