"""The promotion gate that compares a candidate with the alias's current model on the same
labelled test snapshot, each scored through its own verified pipeline."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.config import TrainConfig
from sparkml_prod.core.time import naive_utc, parse_window
from sparkml_prod.data.matrix import SPLIT_COL, labelled_spine
from sparkml_prod.data.split import resolve_split
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
    candidate_fit: str | None = None,
    test_dates: Sequence[dt.datetime] = (),
) -> Callable[[ModelVersion, ModelVersion | None], tuple[bool, str]]:
    """A promotion gate: the candidate must beat the alias's current model by ``margin``
    of ``metric`` on the same test snapshot (``labelled_test``: entity, as_of, label).
    ``candidate_metric``, when given, is the candidate's measured metric on that snapshot
    (a refitted candidate has seen it: its time-gapped fit's metric judges it, and
    ``candidate_fit`` says so in the verdict). With ``test_dates`` the verdict notes a
    current model fitted on snapshots whose label windows reach the test snapshot (its
    metric there is optimistic, so the gate errs towards keeping it).

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
            f"test {metric}: candidate {candidate.name}/{candidate.version} {ours:.4f}"
            + (f" ({candidate_fit})" if candidate_fit else "")
            + ", "
            f"current {current.name}/{current.version} {theirs:.4f}, required margin {margin}"
            + _seen_test_labels(current, test_dates)
        )
        return better >= margin, verdict

    return gate


def _seen_test_labels(current: ModelVersion, test_dates: Sequence[dt.datetime]) -> str:
    """A note when ``current`` was fitted on a snapshot whose label window reaches past the
    first test as-of (it has seen some of the test period's outcomes)."""
    if not test_dates:
        return ""
    card = current.card
    horizon = dt.timedelta(microseconds=parse_window(card.label.horizon, owner="the gate"))
    first_test = min(naive_utc(d) for d in test_dates)
    seen = [
        day
        for day in card.deployed.snapshots
        if naive_utc(dt.date.fromisoformat(day)) + horizon > first_test
    ]
    if not seen:
        return ""
    return (
        f"; {current.name}/{current.version} was fitted on snapshot(s) {', '.join(seen)}, "
        f"whose {card.label.horizon} labels reach the test snapshot: its test metric is "
        "optimistic"
    )
