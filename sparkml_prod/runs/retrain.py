"""Retraining that closes the loop: ``sparkml-prod retrain --config conf/train.yaml --as-of D``.

The training config's ``retrain`` section states the split as durations before the run
date ``D`` (:class:`~sparkml_prod.core.config.RetrainConfig`); :func:`retrain_config`
turns it into dates (:func:`~sparkml_prod.data.split.relative_split`) and
:func:`run_retraining` trains exactly as ``sparkml-prod train`` does with them: the same
checks before any data is read, the same matrix, search, evaluation and card (which
records ``D``). The new version is promoted only through the gate: it must beat the
alias's current model on the same test snapshot, each scored through its own pipeline.
With ``refit`` the registered version is the chosen params fitted on every snapshot, and
it is judged by its time-gapped fit's test metric.

Run ``D`` on the schedule the labels allow: with ``test: [30d]`` and a 30-day horizon, the
test snapshot's labels need the events up to ``D``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pyspark.sql import SparkSession

from sparkml_prod.core.config import BacktestConfig, TrainConfig
from sparkml_prod.core.errors import ConfigError
from sparkml_prod.data.split import relative_backtest, relative_split
from sparkml_prod.runs.train import TrainingRun, run_training

__all__ = ["retrain_config", "run_retraining"]


def retrain_config(config: TrainConfig, run_date: dt.date) -> TrainConfig:
    """The training config of the run date: its split and backtest dates counted back from
    ``run_date`` (no data read; the split's leakage checks follow in training's plan)."""
    if config.retrain is None:
        raise ConfigError(
            f"model '{config.model_name}': retrain needs a 'retrain' section in the train "
            "config, the split as durations before the run date, e.g. retrain: {train: "
            "{earliest: 400d, latest: 90d, every: 14d}, validation: [60d], test: [30d]}."
        )
    if not config.promote_to:
        raise ConfigError(
            f"model '{config.model_name}': retrain promotes only through the gate against "
            "the current model; set promote_to (e.g. production)."
        )
    if not isinstance(run_date, dt.date) or isinstance(run_date, dt.datetime):
        raise ConfigError(f"The retrain run date must be a date, got {run_date!r}.")
    return dataclasses.replace(
        config,
        split=relative_split(config.retrain, run_date),
        backtest=BacktestConfig(test=relative_backtest(config.retrain, run_date)),
    )


def run_retraining(spark: SparkSession, config: TrainConfig, run_date: dt.date) -> TrainingRun:
    """Train on the split of ``run_date``, register, and promote through the gate."""
    return run_training(spark, retrain_config(config, run_date), run_date=run_date)
