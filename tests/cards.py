"""Model cards for tests that register hand-built pipelines: every field typed and set, so a
change of the card's schema breaks these tests as it would break the library."""

from __future__ import annotations

from typing import Any

from sparkml_prod.registry.card import (
    CARD_SCHEMA_VERSION,
    DeployedModel,
    InputSchemas,
    LabelRule,
    MatrixRecord,
    ModelCard,
    SpineRule,
)

EVENT_COLUMNS = {
    "user_id": "bigint",
    "event_time": "timestamp",
    "event_type": "string",
    "amount": "double",
}


def make_card(
    events: str = "/data/events",
    lookback: str = "90d",
    source_schema: dict[str, str] | None = None,
    **fields: Any,
) -> ModelCard:
    """A complete card for a model trained on ``events`` (any field can be overridden)."""
    values: dict[str, Any] = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": "m",
        "version": 0,
        "created_at": "",
        "model_type": "xgboost",
        "model_description": "a test model",
        "feature_names": ["event_count_7d"],
        "categorical_features": [],
        "feature_stage_count": 1,
        "spine": SpineRule(
            source=events,
            lookback=lookback,
            entity_col="user_id",
            timestamp_col="event_time",
            as_of_col="as_of",
        ),
        "label": LabelRule(
            source=events,
            filter="event_type = 'purchase'",
            horizon="30d",
            kind="binary",
            value_col=None,
            entity_col="user_id",
            timestamp_col="event_time",
            complete_until="2024-07-01T00:00:00+00:00",
        ),
        "as_of_dates": {"train": ["2024-01-01"], "validation": [], "test": ["2024-03-01"]},
        "input_schema": InputSchemas(
            spine={"user_id": "bigint", "as_of": "timestamp"},
            sources={events: dict(source_schema or EVENT_COLUMNS)},
        ),
        "matrix": MatrixRecord(
            table="/data/matrix",
            delta_version=0,
            rows=0,
            content_hash="",
            source_versions={events: 0},
            rows_and_positives={},
        ),
        "params": {},
        "best_iteration": None,
        "metrics": {},
        "search": {},
        "backtest": None,
        "library_versions": {},
        "training_config": {},
        "timings_s": {},
        "reference_profile": {},
        "pipeline_sha256": {},
        "deployed": DeployedModel(fit="selected", snapshots=["2024-01-01"], rows=0, num_trees=None),
        "run_date": None,
        "mlflow": None,
    }
    values.update(fields)
    return ModelCard(**values)
