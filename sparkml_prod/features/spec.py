"""A declarative feature spec (YAML) that builds the list of feature stages.

A job config names its features without Python code::

    entity_col: user_id          # spine columns, applied to every stage
    as_of_col: as_of
    stages:
      - type: window_aggregates
        source: events           # a table reference, or a name from the job's `sources`
        windows: [7d, 30d, 90d]
        filters: {purchase: "event_type = 'purchase'"}
        aggregations:
          - {agg: count}
          - {agg: sum, column: amount, filter: purchase}
      - type: recency
        source: events
        filters: {purchase: "event_type = 'purchase'"}
      - type: lookup
        source: user_attributes
        attributes: [plan, country]
      - type: ratios              # try_divide: a zero denominator gives null
        ratios: {purchase_share_30d: [purchase_count_30d, event_count_30d]}
      - type: derived             # any Spark SQL expression
        expressions: {trend_7_30: "try_divide(event_count_7d * 30, event_count_30d * 7)"}
      - type: categorical         # StringIndexer, unseen categories kept (see categorical.py)
        columns: [plan, country]

Keys of a stage are snake_case forms of the stage's Params. ``source`` is looked up in
the ``sources`` mapping the job passes (so one spec serves the demo and production
tables), and used as a table reference when it is not there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from pyspark.ml.base import Estimator, Transformer

from sparkml_prod.core.config import read_yaml
from sparkml_prod.core.errors import ConfigError
from sparkml_prod.features.aggregates import WindowAggregates
from sparkml_prod.features.categorical import categorical_indexer
from sparkml_prod.features.derived import DerivedColumns
from sparkml_prod.features.lookup import PointInTimeLookup
from sparkml_prod.features.recency import Recency

__all__ = ["build_feature_stages", "declared_outputs", "load_feature_spec", "PipelineStage"]

PipelineStage = Union[Estimator, Transformer]  # noqa: UP007 (a runtime alias)

_SOURCE_KEYS = {
    "source": "sourceTable",
    "source_entity_col": "sourceEntityCol",
    "timestamp_col": "timestampCol",
    "output_prefix": "outputPrefix",
}
_STAGE_KEYS: dict[str, dict[str, str]] = {
    "window_aggregates": {
        **_SOURCE_KEYS,
        "windows": "windows",
        "aggregations": "aggregations",
        "filters": "filters",
    },
    "recency": {**_SOURCE_KEYS, "filters": "filters", "lookback": "lookback"},
    "lookup": {**_SOURCE_KEYS, "attributes": "attributeCols"},
    "ratios": {"ratios": "ratios"},
    "derived": {"expressions": "expressions"},
    "categorical": {"columns": "columns"},
}
_CLASSES = {"window_aggregates": WindowAggregates, "recency": Recency, "lookup": PointInTimeLookup}


def load_feature_spec(
    path: str | Path, sources: Mapping[str, str] | None = None
) -> list[PipelineStage]:
    """Read a YAML feature spec and build its stages (see the module docs)."""
    spec = read_yaml(path, kind="Feature spec")
    return build_feature_stages(spec, sources, origin=str(path))


def build_feature_stages(
    spec: Any, sources: Mapping[str, str] | None = None, origin: str = "<feature spec>"
) -> list[PipelineStage]:
    """Build the feature stages of a parsed spec, in order."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("stages"), list):
        raise ConfigError(f"{origin}: expected a mapping with a list under 'stages'.")
    unknown = sorted(set(spec) - {"entity_col", "as_of_col", "stages"})
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key '{unknown[0]}'; expected one of: as_of_col, entity_col, stages."
        )
    spine_params = {
        "entityCol": spec.get("entity_col", "user_id"),
        "asOfCol": spec.get("as_of_col", "as_of"),
    }
    stages = [
        _build_stage(item, i, spine_params, sources or {}, origin)
        for i, item in enumerate(spec["stages"])
    ]
    try:
        declared_outputs(stages, origin)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return stages


def _build_stage(
    item: Any, index: int, spine_params: dict[str, str], sources: Mapping[str, str], origin: str
) -> PipelineStage:
    where = f"{origin}: stages[{index}]"
    if not isinstance(item, Mapping) or item.get("type") not in _STAGE_KEYS:
        raise ConfigError(f"{where}: 'type' must be one of {', '.join(_STAGE_KEYS)}; got {item!r}.")
    kind = item["type"]
    allowed = _STAGE_KEYS[kind]
    settings = {k: v for k, v in item.items() if k != "type"}
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' for type {kind}; "
            f"expected one of: {', '.join(sorted(allowed))}."
        )
    try:
        if kind == "categorical":
            return categorical_indexer(settings.get("columns") or [])
        if kind == "ratios":
            return _sql_columns(
                {
                    name: f"try_divide(`{pair[0]}`, `{pair[1]}`)"
                    for name, pair in _ratios(settings).items()
                }
            )
        if kind == "derived":
            return _sql_columns(dict(settings.get("expressions") or {}))
        params = {allowed[k]: v for k, v in settings.items()}
        if "sourceTable" in params:
            params["sourceTable"] = sources.get(params["sourceTable"], params["sourceTable"])
        return _CLASSES[kind](**spine_params, **params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} ({kind}): {exc}") from None


def _ratios(settings: Mapping[str, Any]) -> dict[str, list[str]]:
    ratios = settings.get("ratios")
    if not isinstance(ratios, Mapping) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(c, str) for c in v)
        for v in ratios.values()
    ):
        raise ValueError(
            "'ratios' must map each output name to [numerator column, denominator column]; "
            f"got {ratios!r}."
        )
    return dict(ratios)


def _sql_columns(expressions: Mapping[str, str]) -> DerivedColumns:
    """One stage adding named expression columns to every row."""
    if not expressions:
        raise ValueError("at least one output column is needed")
    return DerivedColumns(expressions=dict(expressions))


def declared_outputs(stages: Sequence[Any], origin: str = "the feature stages") -> list[str]:
    """The columns the stages declare they add, in pipeline order (fitted or not).

    Our stages list them (``outputColumns``); a categorical indexer its ``outputCols``.
    Raises ValueError for a stage that declares nothing (it could add any column, so the
    model's inputs would not be known) or for an output two stages both add.
    """
    names: list[str] = []
    for index, stage in enumerate(stages):
        if hasattr(stage, "outputColumns"):
            added = list(stage.outputColumns())
        elif stage.hasParam("outputCols") and stage.isDefined(stage.getParam("outputCols")):
            added = list(stage.getOrDefault(stage.getParam("outputCols")))
        else:
            raise ValueError(
                f"Stage {index} of {origin} ({type(stage).__name__}) does not declare its "
                "output columns, so the model's features would not be known. Use the spec's "
                "stage types (window_aggregates, recency, lookup, ratios, derived, categorical)."
            )
        repeated = sorted(set(added) & set(names))
        if repeated:
            raise ValueError(
                f"Stage {index} of {origin} ({type(stage).__name__}) adds column(s) "
                f"{', '.join(repeated)} that an earlier stage adds too; rename one "
                "(outputPrefix, or another name in the spec)."
            )
        names += added
    return names
