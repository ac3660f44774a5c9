"""The model card: a typed round trip, and clear errors for a card this library cannot read."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cards import make_card

from sparkml_prod.core.errors import ModelCardError
from sparkml_prod.registry.card import DeployedModel, ModelCard

WHERE = "of model m/3 ('/models/m/3/card.json')"


def card_dict() -> dict:
    return dataclasses.asdict(make_card(name="m", version=3))


def test_a_card_round_trips_through_json_as_the_same_typed_object() -> None:
    card = make_card(name="m", version=3, params={"max_depth": 4})
    assert ModelCard.from_json(card.to_json(), WHERE) == card
    assert card.label_ref == "m/3"


def test_an_unknown_schema_version_names_the_model_and_the_versions() -> None:
    data = {**card_dict(), "schema_version": 7}
    with pytest.raises(ModelCardError) as raised:
        ModelCard.from_json(json.dumps(data), WHERE)
    assert str(raised.value) == (
        "The model card of model m/3 ('/models/m/3/card.json') has schema_version 7; this "
        "version of sparkml-prod reads schema_version 1 to 3. Score it with the sparkml-prod "
        "release that trained it, or retrain the model."
    )


def test_a_missing_field_is_named_with_the_model() -> None:
    data = card_dict()
    del data["matrix"]["content_hash"]
    with pytest.raises(ModelCardError) as raised:
        ModelCard.from_dict(data, WHERE)
    assert str(raised.value) == (
        "The model card of model m/3 ('/models/m/3/card.json'): missing required key "
        "'matrix.content_hash' (a string). The card is not one this library wrote: retrain "
        "the model, or restore the file."
    )


def test_a_field_of_the_wrong_type_is_named_with_the_model() -> None:
    data = {**card_dict(), "feature_names": "event_count_7d"}
    with pytest.raises(ModelCardError) as raised:
        ModelCard.from_dict(data, WHERE)
    assert str(raised.value) == (
        "The model card of model m/3 ('/models/m/3/card.json'): key 'feature_names' must be "
        "a list of a string, got str 'event_count_7d'. The card is not one this library "
        "wrote: retrain the model, or restore the file."
    )


def test_a_card_that_is_not_json_is_refused() -> None:
    with pytest.raises(ModelCardError, match=r"^The model card of model m/3 .* is not valid"):
        ModelCard.from_json("{", WHERE)


def test_a_version_1_card_reads_as_the_selected_fit_without_a_run_date() -> None:
    data = card_dict()
    del data["deployed"], data["run_date"], data["mlflow"]
    data.update(
        schema_version=1,
        as_of_dates={"train": ["2024-01-01", "2024-01-15"], "validation": [], "test": []},
        best_iteration=41,
    )
    data["matrix"]["rows_and_positives"] = {"train": {"rows": 900, "positives": 90}}
    card = ModelCard.from_dict(data, WHERE)
    assert card.schema_version == 3
    assert card.deployed == DeployedModel(
        fit="selected", snapshots=["2024-01-01", "2024-01-15"], rows=900, num_trees=42
    )
    assert card.run_date is None
    assert card.mlflow is None


def test_a_version_1_card_with_version_2_fields_is_refused() -> None:
    data = {**card_dict(), "schema_version": 1}
    del data["mlflow"]
    with pytest.raises(ModelCardError, match="schema_version 1 but the version-2 key 'deployed'"):
        ModelCard.from_dict(data, WHERE)


def test_a_version_2_card_reads_as_not_logged_to_mlflow() -> None:
    data = {**card_dict(), "schema_version": 2}
    del data["mlflow"]
    card = ModelCard.from_dict(data, WHERE)
    assert card == make_card(name="m", version=3)  # schema 3, mlflow None


def test_a_version_2_card_with_the_version_3_field_is_refused() -> None:
    data = {**card_dict(), "schema_version": 2}
    with pytest.raises(ModelCardError) as raised:
        ModelCard.from_dict(data, WHERE)
    assert str(raised.value) == (
        "The model card of model m/3 ('/models/m/3/card.json') has schema_version 2 but the "
        "version-3 key 'mlflow'. The card is not one this library wrote: retrain the model, "
        "or restore the file."
    )
