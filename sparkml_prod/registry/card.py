"""The model card: the typed, versioned contract between training, scoring and monitoring.

Training writes one ``card.json`` into each model version's directory; scoring, promotion,
rebuilds and monitoring read it back into :class:`ModelCard`. Every field is required: a
card missing a field, with a field of the wrong type, with an unknown field, or of a
schema version this library does not know is a :class:`~sparkml_prod.core.errors.
ModelCardError` naming the model and the field, never a silent default.

The registry assigns ``name``, ``version``, ``created_at`` and ``pipeline_sha256`` when it
registers a card (see :meth:`sparkml_prod.registry.ModelRegistry.register`). Instants are
UTC: dates are ``YYYY-MM-DD`` (midnight UTC), times ISO 8601 with ``+00:00``.

Schema history: version 2 added ``deployed`` (which fit of the chosen params is the
registered pipeline) and ``run_date`` (the date a ``retrain`` counted its split back
from); version 3 added ``mlflow`` (where the version was also logged and registered in
MLflow, or null). An older card is read as what it was: a version-1 card as the selected
fit with no run date, a version-1 or 2 card as not logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sparkml_prod.core.config import from_mapping
from sparkml_prod.core.errors import ConfigError, ModelCardError

__all__ = [
    "CARD_FILE",
    "CARD_SCHEMA_VERSION",
    "DeployedModel",
    "InputSchemas",
    "LabelRule",
    "MatrixRecord",
    "MlflowRecord",
    "ModelCard",
    "SpineRule",
]

CARD_FILE = "card.json"
CARD_SCHEMA_VERSION = 3


@dataclasses.dataclass(frozen=True)
class SpineRule:
    """Who the model was trained on, and so who is scored by default: every entity of
    ``source`` with an event in ``[as_of - lookback, as_of)``."""

    source: str
    lookback: str
    entity_col: str
    timestamp_col: str
    as_of_col: str


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """What the model predicts: events of ``source`` matching ``filter`` in
    ``[as_of, as_of + horizon)``; labels were complete until ``complete_until`` (UTC)."""

    source: str
    filter: str | None
    horizon: str
    kind: str
    value_col: str | None
    entity_col: str
    timestamp_col: str
    complete_until: str


@dataclasses.dataclass(frozen=True)
class InputSchemas:
    """Column -> Spark SQL type of the spine and of every source table the model reads."""

    spine: dict[str, str]
    sources: dict[str, dict[str, str]]


@dataclasses.dataclass(frozen=True)
class MatrixRecord:
    """The training matrix as written, and what rebuilds it exactly.

    ``source_versions`` are the Delta versions every read of training was pinned to
    (None for a source without versions, such as a view); ``rows`` and ``content_hash``
    (:func:`sparkml_prod.data.fingerprint.content_hash`) are what a rebuild must match.
    """

    table: str
    delta_version: int
    rows: int
    content_hash: str
    source_versions: dict[str, int | None]
    rows_and_positives: dict[str, dict[str, int]]


@dataclasses.dataclass(frozen=True)
class DeployedModel:
    """Which fit of the chosen params the registered pipeline is.

    ``fit`` is ``selected`` (the search's best candidate as fitted on the training
    snapshots: the card's ``metrics`` are its time-gapped test metrics) or ``refit`` (the
    same params fitted again on ``snapshots``, every snapshot of the split, test
    included, with ``num_trees`` trees: the number the selected candidate's early
    stopping chose; the card's ``metrics`` are still the selected candidate's, the
    time-gapped judgement the refit was promoted on). ``rows``: the rows it was fitted on.
    """

    fit: str
    snapshots: list[str]
    rows: int
    num_trees: int | None


@dataclasses.dataclass(frozen=True)
class MlflowRecord:
    """Where training also logged this version to MLflow
    (:mod:`sparkml_prod.registry.mlflow_registry`).

    ``run_id`` is the MLflow run holding the params, metrics, report and this card
    (``card.json``); ``model_version`` the version of the registered model of the card's
    ``name``, whose artifact is the same pipeline saved again by ``mlflow.spark`` (its
    ``sparkml/`` directory). That copy's files are not the bytes of the directory
    registry's copy (Spark writes a timestamp and fresh file names on every save), so
    ``pipeline_sha256`` holds the SHA-256 of every file of the logged ``sparkml/``, checked
    before a ``models:/`` reference loads it.
    """

    tracking_uri: str
    registry_uri: str | None
    experiment_id: str
    run_id: str
    model_version: int
    pipeline_sha256: dict[str, str]


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything known about one registered model version (see the module docs).

    ``feature_names`` are the model's inputs in order: the feature stages' declared
    outputs that are numeric, never "every numeric column" of the matrix.
    ``feature_stage_count`` is how many leading stages of the saved pipeline are feature
    stages (the rest are model stages). ``training_config`` is the training config as
    run, so a retrain or a rebuild starts from exactly what was run.
    ``reference_profile`` is what monitoring compares every scoring run with
    (:class:`sparkml_prod.monitoring.profile.ReferenceProfile`: the features' bins and
    shares on the training rows, the score's on the test snapshot).
    """

    schema_version: int
    name: str
    version: int
    created_at: str
    model_type: str
    model_description: str
    feature_names: list[str]
    categorical_features: list[str]
    feature_stage_count: int
    spine: SpineRule
    label: LabelRule
    as_of_dates: dict[str, list[str]]
    input_schema: InputSchemas
    matrix: MatrixRecord
    params: dict[str, Any]
    best_iteration: int | None
    metrics: dict[str, float]
    search: dict[str, Any]
    backtest: dict[str, Any] | None
    library_versions: dict[str, str]
    training_config: dict[str, Any]
    timings_s: dict[str, float]
    reference_profile: dict[str, Any]
    pipeline_sha256: dict[str, str]
    deployed: DeployedModel
    run_date: str | None
    mlflow: MlflowRecord | None

    @property
    def label_ref(self) -> str:
        """``name/version``, how messages name the model."""
        return f"{self.name}/{self.version}"

    def to_json(self) -> str:
        """The card as JSON text (``card.json``)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelCard:
        """Parse and check a card; ``where`` names the model and file in errors."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelCardError(f"The model card {where} is not valid JSON: {error}.") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelCard:
        """Check a parsed card against this schema version (see the module docs)."""
        found = data.get("schema_version") if isinstance(data, dict) else None
        if found == 1:
            data = _upgrade_from_1(data, where)
            found = 2
        if found == 2:
            data = _upgrade_from_2(data, where)
            found = CARD_SCHEMA_VERSION
        if found != CARD_SCHEMA_VERSION:
            raise ModelCardError(
                f"The model card {where} has schema_version {found!r}; this version of "
                f"sparkml-prod reads schema_version 1 to {CARD_SCHEMA_VERSION}. Score it with the "
                "sparkml-prod release that trained it, or retrain the model."
            )
        try:
            return from_mapping(data, cls, source=f"The model card {where}")
        except ConfigError as error:
            raise ModelCardError(
                f"{error} The card is not one this library wrote: retrain the model, or "
                "restore the file."
            ) from None


def _upgrade_from_1(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A version-1 card as version 2: it registered the selected fit, trained without a
    run date."""
    newer = [key for key in ("deployed", "run_date") if key in data]
    if newer:
        raise ModelCardError(
            f"The model card {where} has schema_version 1 but the version-2 key "
            f"'{newer[0]}'. The card is not one this library wrote: retrain the model, or "
            "restore the file."
        )
    dates = data.get("as_of_dates")
    counts = (data.get("matrix") or {}).get("rows_and_positives")
    best = data.get("best_iteration")
    train = dates.get("train") if isinstance(dates, dict) else None
    rows = (counts.get("train") or {}).get("rows") if isinstance(counts, dict) else None
    return {
        **data,
        "schema_version": 2,
        "deployed": {
            "fit": "selected",
            "snapshots": train if isinstance(train, list) else [],
            "rows": rows if isinstance(rows, int) else 0,
            "num_trees": best + 1 if isinstance(best, int) else None,
        },
        "run_date": None,
    }


def _upgrade_from_2(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A version-2 card as version 3: not logged to MLflow."""
    if "mlflow" in data:
        raise ModelCardError(
            f"The model card {where} has schema_version 2 but the version-3 key 'mlflow'. "
            "The card is not one this library wrote: retrain the model, or restore the file."
        )
    return {**data, "schema_version": CARD_SCHEMA_VERSION, "mlflow": None}
