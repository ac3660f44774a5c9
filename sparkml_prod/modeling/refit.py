"""The refit: the chosen params fitted again on every labelled snapshot.

The search chooses the params (and, by early stopping on the validation snapshot,
XGBoost's number of trees) on the time-gapped split, and the test snapshot judges the
choice. That model never saw the newest snapshots whose labels are complete: the
validation and test ones. :func:`refit_all_snapshots` fits the same params on every row
of the training matrix with the number of trees fixed to what early stopping chose (no
early stopping: there is no later snapshot left to stop on), so the deployed model is as
recent as the labels allow. The feature stages are not refitted: categories indexed on the
training snapshots stay the model's categories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.config import ModelConfig
from sparkml_prod.data.matrix import SPLIT_COL
from sparkml_prod.modeling.training import DEFAULT_TREES, fit_candidate

__all__ = ["refit_all_snapshots", "refit_settings", "trees_used"]


def trees_used(
    model: ModelConfig, params: Mapping[str, Any], best_iteration: int | None
) -> int | None:
    """Trees an XGBoost model predicts with: ``best_iteration + 1`` after early stopping,
    else ``n_estimators`` (None for a model without trees to count)."""
    if model.type != "xgboost":
        return None
    if model.early_stopping_rounds and best_iteration is not None:
        return best_iteration + 1
    return int(params.get("n_estimators", DEFAULT_TREES))


def refit_settings(
    model: ModelConfig, params: Mapping[str, Any], best_iteration: int | None
) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and params of the refit: the same params, XGBoost's number of trees
    fixed to :func:`trees_used` and early stopping off."""
    trees = trees_used(model, params, best_iteration)
    if trees is None:
        return model, dict(params)
    return dataclasses.replace(model, early_stopping_rounds=None), {
        **params,
        "n_estimators": trees,
    }


def refit_all_snapshots(
    matrix: DataFrame,
    model: ModelConfig,
    params: Mapping[str, Any],
    best_iteration: int | None,
    feature_columns: Sequence[str],
) -> PipelineModel:
    """The model stages fitted on every row of ``matrix`` (see the module docs)."""
    refit_model, refit_params = refit_settings(model, params, best_iteration)
    rows = matrix.withColumn(SPLIT_COL, F.lit("train"))
    return fit_candidate(rows, refit_model, feature_columns, refit_params)
