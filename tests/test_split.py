"""The split of a retrain run date, and validation on held-out entities."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
import xxhash
import yaml
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkml_prod.cli import main
from sparkml_prod.core.config import (
    HeldOutEntities,
    RelativeSchedule,
    RetrainConfig,
    TrainConfig,
    from_mapping,
)
from sparkml_prod.core.errors import ConfigError, LeakageError
from sparkml_prod.core.tables import write_table
from sparkml_prod.data.matrix import labelled_spine
from sparkml_prod.data.split import (
    check_time_split,
    held_out_entity,
    relative_split,
    resolve_split,
)
from sparkml_prod.runs.retrain import retrain_config

D = dt.date
UTC = dt.timezone.utc
RETRAIN = RetrainConfig(
    train=RelativeSchedule(earliest="120d", latest="90d", every="14d"),
    validation=["60d"],
    test=["30d"],
    backtest=["45d"],
)


def config(tmp_path: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "model_name": "purchase_30d",
        "registry_root": str(tmp_path / "models"),
        "feature_spec": "conf/features.yaml",
        "sources": {"events": str(tmp_path / "events")},
        "spine": {"source": "events", "lookback": "30d"},
        "label": {"source": "events", "filter": "event_type = 'purchase'", "horizon": "30d"},
        "split": {"train": [D(2024, 1, 1)], "validation": [D(2024, 2, 1)], "test": [D(2024, 3, 2)]},
        "matrix_table": str(tmp_path / "matrix"),
        "report_dir": str(tmp_path / "report"),
        "promote_to": "production",
        "retrain": dataclasses.asdict(RETRAIN),
        **overrides,
    }
    return from_mapping(settings, TrainConfig, source="test config")


def test_the_split_of_a_run_date_counts_back_from_it(tmp_path: Path) -> None:
    resolved = retrain_config(config(tmp_path), D(2024, 7, 1))
    assert resolved.split.train == [D(2024, 3, 5), D(2024, 3, 19), D(2024, 4, 2)]
    assert resolved.split.validation == [D(2024, 5, 2)]
    assert resolved.split.test == [D(2024, 6, 1)]
    assert resolved.backtest.test == [D(2024, 5, 17)]
    check_time_split(resolve_split(resolved.split), "30d")
    # Across February of a leap year, in whole days: the test date's labels end at the run date.
    leap = relative_split(RETRAIN, D(2024, 3, 1))
    assert (leap.train, leap.validation, leap.test) == (
        [D(2023, 11, 4), D(2023, 11, 18), D(2023, 12, 2)],
        [D(2024, 1, 1)],
        [D(2024, 1, 31)],
    )
    listed = dataclasses.replace(RETRAIN, train=["200d", "90d"])
    assert relative_split(listed, D(2024, 7, 1)).train == [D(2023, 12, 14), D(2024, 4, 2)]


def test_held_out_entities_let_the_newest_training_date_sit_one_horizon_before_test() -> None:
    held_out = RetrainConfig(
        train=RelativeSchedule(earliest="88d", latest="60d", every="14d"),
        validation=HeldOutEntities(entity_share=0.2),
        test=["30d"],
    )
    split = relative_split(held_out, D(2024, 7, 1))
    assert split.train == [D(2024, 4, 4), D(2024, 4, 18), D(2024, 5, 2)]
    assert split.validation == HeldOutEntities(entity_share=0.2, salt="validation")
    check_time_split(resolve_split(split), "30d")
    assert resolve_split(split).validation == ()
    dated = dataclasses.replace(held_out, validation=["60d"])
    with pytest.raises(LeakageError) as raised:
        check_time_split(resolve_split(relative_split(dated, D(2024, 7, 1))), "30d")
    assert str(raised.value) == (
        "The time split leaks: the label window of training as-of 2024-05-02 (horizon 30d) "
        "runs to 2024-06-01, past the validation as-of 2024-05-02. Move the validation date "
        "to 2024-06-01 or later, or drop the training date."
    )


@pytest.mark.parametrize(
    ("retrain", "message"),
    [
        (
            {**dataclasses.asdict(RETRAIN), "test": ["12h"]},
            "retrain.test[0] must be a duration before the run date in whole days or weeks, "
            "such as '30d' or '2w'; got '12h'.",
        ),
        (
            {**dataclasses.asdict(RETRAIN), "train": {"earliest": "60d", "latest": "90d"}},
            "retrain.train.earliest (60d) must be at least retrain.train.latest (90d): both "
            "count back from the run date.",
        ),
        (
            {**dataclasses.asdict(RETRAIN), "validation": {"entity_share": 1.0}},
            "retrain.validation.entity_share must be a share of the entities strictly between "
            "0 and 1 (e.g. 0.2), got 1.0.",
        ),
        (
            None,
            "model 'purchase_30d': retrain needs a 'retrain' section in the train config, the "
            "split as durations before the run date, e.g. retrain: {train: {earliest: 400d, "
            "latest: 90d, every: 14d}, validation: [60d], test: [30d]}.",
        ),
    ],
)
def test_a_bad_retrain_section_is_refused_with_the_key(
    tmp_path: Path, retrain: object, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        retrain_config(config(tmp_path, retrain=retrain), D(2024, 7, 1))
    assert str(raised.value) == message


def test_retrain_without_promote_to_fails_in_the_cli_before_spark_reads_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "train.yaml"
    settings = dataclasses.asdict(config(tmp_path, promote_to=None))
    path.write_text(yaml.safe_dump(settings))
    assert main(["retrain", "--config", str(path), "--as-of", "2024-07-01"]) == 2
    assert capsys.readouterr().err == (
        "sparkml-prod retrain: error: model 'purchase_30d': retrain promotes only through "
        "the gate against the current model; set promote_to (e.g. production).\n"
    )


def reference_held_out(entity: int, salt: str, share: float) -> bool:
    """Spark's ``xxhash64(lit, string)`` computed with the xxhash package: the literal is
    hashed with seed 42, and its hash seeds the id's."""
    seed = xxhash.xxh64_intdigest(("validation:" + salt).encode(), seed=42)
    signed = xxhash.xxh64_intdigest(str(entity).encode(), seed=seed)
    signed -= (1 << 64) if signed >= (1 << 63) else 0
    return signed % 10_000 < round(share * 10_000)


def test_the_held_out_entities_are_a_salted_hash_of_the_id(spark: SparkSession) -> None:
    held_out = HeldOutEntities(entity_share=0.2, salt="q3")
    flagged = spark.range(20_000).repartition(3).where(held_out_entity(F.col("id"), held_out))
    expected = {i for i in range(20_000) if reference_held_out(i, "q3", 0.2)}
    assert {r.id for r in flagged.collect()} == expected
    assert abs(len(expected) / 20_000 - 0.2) <= 0.01


def test_held_out_entities_validate_on_every_training_date_and_never_test(
    spark: SparkSession, tmp_path: Path
) -> None:
    # 40 users, each with one event before every as-of: all are in every snapshot.
    train_dates, test_date = [D(2024, 3, 1), D(2024, 3, 15)], D(2024, 4, 20)
    events = [
        (user, dt.datetime(day.year, day.month, day.day, tzinfo=UTC) - dt.timedelta(days=1), "view")
        for user in range(1, 41)
        for day in (*train_dates, test_date)
    ]
    ref = str(tmp_path / "events")
    schema = "user_id long, event_time timestamp, event_type string"
    write_table(spark.createDataFrame(events, schema), ref)
    share = {"entity_share": 0.25, "salt": "s"}
    cfg = config(tmp_path, split={"train": train_dates, "validation": share, "test": [test_date]})
    dates = {k: list(v) for k, v in dataclasses.asdict(resolve_split(cfg.split)).items()}
    result = labelled_spine(spark, cfg, dates).select(
        "user_id", F.date_format("as_of", "yyyy-MM-dd").alias("day"), "split"
    )
    rows = [
        (user, f"{day}", "test" if day == test_date else split)
        for user in range(1, 41)
        for day in (*train_dates, test_date)
        for split in ["validation" if reference_held_out(user, "s", 0.25) else "train"]
    ]
    expected = spark.createDataFrame(rows, "user_id long, day string, split string")
    assert_df_equality(result, expected, ignore_row_order=True, ignore_nullable=True)
    assert 0 < sum(r[2] == "validation" for r in rows) < 2 * 40
