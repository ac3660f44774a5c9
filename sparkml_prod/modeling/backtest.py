"""Rolling backtest: for each backtest date, train on the snapshots whose label windows end
before it (the latest of them validates), and test on that date.

The folds are planned from the dates alone (:func:`plan_backtest`), so a fold without
enough earlier snapshots is refused before any data is read.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.config import ModelConfig
from sparkml_prod.core.errors import ConfigError
from sparkml_prod.core.time import instant_in, parse_window, timestamp_lit
from sparkml_prod.data.matrix import SPLIT_COL
from sparkml_prod.modeling.evaluation import evaluate
from sparkml_prod.modeling.training import fit_candidate

__all__ = ["BacktestFold", "plan_backtest", "run_backtest"]


@dataclass(frozen=True)
class BacktestFold:
    """One fold: training snapshots, the validation snapshot, the test date."""

    train: tuple[dt.datetime, ...]
    validation: dt.datetime
    test: dt.datetime


def plan_backtest(
    snapshots: Sequence[dt.datetime], test_dates: Sequence[dt.datetime], horizon: str
) -> list[BacktestFold]:
    """The folds of ``test_dates`` over the matrix's ``snapshots`` (no data read).

    Raises
    ------
    ConfigError
        For a test date without two earlier snapshots whose label windows end before it.
    """
    h = dt.timedelta(microseconds=parse_window(horizon, owner="the backtest", param="horizon"))
    folds = []
    for test_date in sorted(test_dates):
        usable = [d for d in sorted(snapshots) if d + h <= test_date]
        validation = usable[-1] if usable else None
        train = tuple(d for d in usable if validation and d + h <= validation)
        if validation is None or not train:
            raise ConfigError(
                f"backtest.test {test_date:%Y-%m-%d}: needs at least two earlier snapshots "
                f"whose {horizon} label windows end before it (one trains, the latest "
                "validates); add earlier training dates or drop this fold."
            )
        folds.append(BacktestFold(train, validation, test_date))
    return folds


def run_backtest(
    matrix: DataFrame,
    model: ModelConfig,
    folds: Sequence[BacktestFold],
    params: Mapping[str, Any],
    features: Sequence[str],
) -> dict[str, Any]:
    """Fit and evaluate each fold on the matrix; the folds' metrics and their summary."""
    results = []
    for fold in folds:
        role = (
            F.when(F.col("as_of") == timestamp_lit(fold.test), "test")
            .when(F.col("as_of") == timestamp_lit(fold.validation), "validation")
            .otherwise("train")
        )
        rows = matrix.where(
            instant_in("as_of", [*fold.train, fold.validation, fold.test])
        ).withColumn(SPLIT_COL, role)
        fitted = fit_candidate(rows, model, features, params)
        metrics = evaluate(fitted.transform(rows.where(F.col(SPLIT_COL) == "test")))
        results.append(
            {
                "test_as_of": f"{fold.test:%Y-%m-%d}",
                "validation_as_of": f"{fold.validation:%Y-%m-%d}",
                "train_snapshots": len(fold.train),
                "n": metrics["n"],
                "base_rate": metrics["base_rate"],
                "roc_auc": metrics["roc_auc"],
                "pr_auc": metrics["pr_auc"],
                "log_loss": metrics["log_loss"],
            }
        )
    summary = {}
    for key in ("roc_auc", "pr_auc", "log_loss"):
        values = [f[key] for f in results]
        summary[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return {"folds": results, "summary": summary}
