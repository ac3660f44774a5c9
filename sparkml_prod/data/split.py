"""The time split: which as-of snapshots train, validate and test, and the rules that keep
their labels from leaking.

A split is by time, never by random rows: training, validation and test snapshots are
as-of dates. :func:`check_time_split` refuses a split where a training label window
reaches the validation or test period, or a validation label window the test period.

Validation can instead be a held-out share of the *entities* of the training snapshots
(:class:`~sparkml_prod.core.config.HeldOutEntities`): an entity is on one side in every
snapshot (a salted hash of its id), so no validation entity is seen in training, and
the newest training snapshot needs to end its label window only before the test date.

For ``sparkml-prod retrain --as-of D`` the config states the split as durations before
``D`` (:class:`~sparkml_prod.core.config.RetrainConfig`); :func:`relative_split` turns
them into dates. Dates are UTC days; as-of instants are naive UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from sparkml_prod.core.config import (
    HeldOutEntities,
    RelativeSchedule,
    RetrainConfig,
    Schedule,
    SplitConfig,
)
from sparkml_prod.core.errors import ConfigError, LeakageError
from sparkml_prod.core.time import naive_utc, parse_window
from sparkml_prod.data.spine import as_of_schedule, as_of_timestamps

__all__ = [
    "TimeSplit",
    "check_held_out",
    "check_time_split",
    "held_out_entity",
    "relative_backtest",
    "relative_split",
    "resolve_split",
]

# Buckets of the held-out hash: shares are exact to 1/10,000 of the entities' hash space.
HELD_OUT_BUCKETS = 10_000
HELD_OUT_NAMESPACE = "validation:"


def _show(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d") if value.time() == dt.time() else value.isoformat(sep=" ")


@dataclass(frozen=True)
class TimeSplit:
    """Training, validation and test as-of instants (each sorted, UTC).

    Values are kept as naive UTC datetimes (a date or an aware datetime given here is
    converted), so the periods compare with each other whatever was given.
    """

    train: tuple[dt.datetime, ...]
    validation: tuple[dt.datetime, ...]
    test: tuple[dt.datetime, ...]

    def __post_init__(self) -> None:
        for name in ("train", "validation", "test"):
            object.__setattr__(self, name, tuple(naive_utc(t) for t in getattr(self, name)))

    def all(self) -> list[dt.datetime]:
        return sorted({*self.train, *self.validation, *self.test})


def check_time_split(split: TimeSplit, horizon: str) -> None:
    """Refuse a split whose label windows reach into a later period.

    Every training as-of ``t`` needs ``t + horizon <=`` the first validation as-of and
    the first test as-of; every validation as-of ``v`` needs ``v + horizon <=`` the
    first test as-of. Training and test must not be empty.

    Raises
    ------
    LeakageError
        Naming the two dates that overlap and the horizon.

    Examples
    --------
    >>> from datetime import datetime as d
    >>> check_time_split(TimeSplit((d(2024, 1, 1),), (d(2024, 2, 1),), (d(2024, 3, 2),)), "30d")
    """
    h = dt.timedelta(microseconds=parse_window(horizon, owner="the time split", param="horizon"))
    if not split.train:
        raise LeakageError("The time split has no training as-of date.")
    if not split.test:
        raise LeakageError("The time split has no test as-of date.")
    pairs = [
        ("training", split.train, "validation", split.validation),
        ("training", split.train, "test", split.test),
        ("validation", split.validation, "test", split.test),
    ]
    for earlier_name, earlier, later_name, later in pairs:
        if not earlier or not later:
            continue
        last_earlier, first_later = max(earlier), min(later)
        if last_earlier + h > first_later:
            raise LeakageError(
                f"The time split leaks: the label window of {earlier_name} as-of "
                f"{_show(last_earlier)} (horizon {horizon}) runs to "
                f"{_show(last_earlier + h)}, past the {later_name} as-of "
                f"{_show(first_later)}. Move the {later_name} date to "
                f"{_show(last_earlier + h)} or later, or drop the {earlier_name} date."
            )


def resolve_split(split: SplitConfig) -> TimeSplit:
    """The split's as-of instants (a training schedule expanded; no validation dates when
    validation is a held-out share of entities)."""
    train = (
        as_of_schedule(split.train.start, split.train.end, split.train.every)
        if isinstance(split.train, Schedule)
        else as_of_timestamps(split.train)
    )
    validation = (
        [] if isinstance(split.validation, HeldOutEntities) else as_of_timestamps(split.validation)
    )
    return TimeSplit(
        train=tuple(train),
        validation=tuple(validation),
        test=tuple(as_of_timestamps(split.test)),
    )


def check_held_out(held_out: HeldOutEntities, key: str = "split.validation") -> None:
    """The share must leave entities on both sides."""
    share = held_out.entity_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ConfigError(
            f"{key}.entity_share must be a share of the entities strictly between 0 and 1 "
            f"(e.g. 0.2), got {share!r}."
        )


def held_out_entity(entity: Column, held_out: HeldOutEntities) -> Column:
    """True for the entities held out for validation: ``xxhash64("validation:" + salt, id)``
    in the lowest ``entity_share`` of the hash's buckets (the same on every snapshot, on
    every run and on any partitioning)."""
    bucket = F.pmod(
        F.xxhash64(F.lit(HELD_OUT_NAMESPACE + held_out.salt), entity.cast("string")),
        F.lit(HELD_OUT_BUCKETS),
    )
    return bucket < F.lit(int(round(held_out.entity_share * HELD_OUT_BUCKETS)))


def _days_before(value: str, key: str) -> dt.timedelta:
    """A duration before the run date, in whole days (the split's dates are days)."""
    try:
        length = dt.timedelta(microseconds=parse_window(value, owner="retrain", param=key))
    except ValueError:
        length = None
    if length is None or length % dt.timedelta(days=1):
        raise ConfigError(
            f"{key} must be a duration before the run date in whole days or weeks, such as "
            f"'30d' or '2w'; got {value!r}."
        )
    return length


def _before(run_date: dt.date, values: Sequence[str], key: str) -> list[dt.date]:
    return sorted({run_date - _days_before(v, f"{key}[{i}]") for i, v in enumerate(values)})


def relative_split(retrain: RetrainConfig, run_date: dt.date) -> SplitConfig:
    """The dates of ``retrain``'s split for the run date (see the module docs).

    A :class:`~sparkml_prod.core.config.RelativeSchedule` gives ``D - latest``,
    ``D - latest - every``, ... back to ``D - earliest`` (the newest training date is
    exactly ``latest`` before the run, whatever the step).

    Examples
    --------
    >>> retrain = RetrainConfig(RelativeSchedule("120d", "90d", "14d"), ["60d"], ["30d"])
    >>> split = relative_split(retrain, dt.date(2024, 7, 1))
    >>> [f"{d}" for d in split.train]
    ['2024-03-05', '2024-03-19', '2024-04-02']
    >>> [f"{d}" for d in (*split.validation, *split.test)]
    ['2024-05-02', '2024-06-01']
    """
    if isinstance(retrain.train, RelativeSchedule):
        schedule = retrain.train
        earliest = _days_before(schedule.earliest, "retrain.train.earliest")
        latest = _days_before(schedule.latest, "retrain.train.latest")
        step = _days_before(schedule.every, "retrain.train.every")
        if earliest < latest:
            raise ConfigError(
                f"retrain.train.earliest ({schedule.earliest}) must be at least "
                f"retrain.train.latest ({schedule.latest}): both count back from the run date."
            )
        count = (earliest - latest) // step + 1
        train = [run_date - latest - k * step for k in reversed(range(count))]
    else:
        train = _before(run_date, retrain.train, "retrain.train")
    validation: list[dt.date] | HeldOutEntities
    if isinstance(retrain.validation, HeldOutEntities):
        check_held_out(retrain.validation, "retrain.validation")
        validation = retrain.validation
    else:
        validation = _before(run_date, retrain.validation, "retrain.validation")
    return SplitConfig(
        train=train, validation=validation, test=_before(run_date, retrain.test, "retrain.test")
    )


def relative_backtest(retrain: RetrainConfig, run_date: dt.date) -> list[dt.date]:
    """The backtest dates of ``retrain`` for the run date."""
    return _before(run_date, retrain.backtest, "retrain.backtest")
