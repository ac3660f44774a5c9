"""The promotion gate that compares a candidate with the alias's current model on the same
labelled test snapshot, each scored through its own verified pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.config import TrainConfig
from sparkml_prod.data.labels import resolve_split
from sparkml_prod.data.matrix import SPLIT_COL, labelled_spine
from sparkml_prod.modeling.evaluation import evaluate
from sparkml_prod.modeling.training import METRICS_HIGHER_IS_BETTER
from sparkml_prod.registry import ModelRegistry, ModelVersion

__all__ = ["comparison_gate", "labelled_test_snapshot"]


def labelled_test_snapshot(registry: ModelRegistry, config: TrainConfig) -> DataFrame:
    """``(entity, as_of, label)`` of the config's test dates, cached (both models score it)."""
    test = {"test": list(resolve_split(config.split).test)}
    labelled = labelled_spine(registry.spark, config, test).where(F.col(SPLIT_COL) == "test")
    return labelled.select(config.spine.entity_col, "as_of", "label").cache()


def comparison_gate(
    registry: ModelRegistry,
    labelled_test: DataFrame,
    candidate_metric: float | None,
    metric: str,
    margin: float,
) -> Callable[[ModelVersion, ModelVersion | None], tuple[bool, str]]:
    """A promotion gate: the candidate must beat the alias's current model by ``margin``
    of ``metric`` on the same test snapshot (``labelled_test``: entity, as_of, label).

    Both models score the raw test spine through their own full pipelines (loaded and
    verified by the registry), so models with different feature stages compare fairly.
    """
    higher = METRICS_HIGHER_IS_BETTER[metric]

    def score(version: ModelVersion) -> float:
        model = registry.load_version(version)
        return float(evaluate(model.transform(labelled_test))[metric])

    def gate(candidate: Any, current: Any) -> tuple[bool, str]:
        if current is None:
            return True, "no current model holds the alias"
        ours = candidate_metric if candidate_metric is not None else score(candidate)
        theirs = score(current)
        better = ours - theirs if higher else theirs - ours
        verdict = (
            f"test {metric}: candidate {candidate.name}/{candidate.version} {ours:.4f}, "
            f"current {current.name}/{current.version} {theirs:.4f}, required margin {margin}"
        )
        return better >= margin, verdict

    return gate
