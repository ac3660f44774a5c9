"""The reference profile: frozen bins and shares of every feature and of the score.

Training computes it once (features from the rows the deployed model was fitted on: the
training matrix's training rows, or all of them after a refit; the score from the test
snapshot scored by the deployed model) and writes it into the model card; every scoring
run's drift (:mod:`sparkml_prod.monitoring.drift`) is measured against these bins.

* **Numeric** column: the inner bin edges are the column's quantiles at ``1/bins, ...,
  (bins-1)/bins`` (``percentile_approx``, exact below ``accuracy`` rows), equal edges
  merged and edges at or above the maximum dropped. Bins are closed on the right:
  ``(-inf, e1], (e1, e2], ..., (ek, +inf)``. A quantile is a value of the data, so every
  bin holds at least one reference row: a feature that is 0 for 60% of rows gets one bin
  ``(-inf, 0]`` with share 0.6 and fewer bins above it.
* **Categorical** column (integer index, double index as a ``StringIndexer`` writes, or
  string): one bin per category with a share of at least ``rare_share``, ordered by share
  (then value); the rarer categories pooled into ``__other__`` (and listed, so they still
  land there later); ``__unseen__`` (share 0 here) for a category training never saw.
* Every column has a last bin ``__missing__`` (null, or NaN in a numeric column); its
  share is the column's ``missing_rate``. Shares are over all rows and sum to 1.

Bounded work: for a frame, one pass computes every numeric column's quantiles and
maximum (a single Spark job), a second pass counts rows per (column, bin or category) in
one grouped aggregation; no row reaches the driver.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from sparkml_prod.core.errors import ModelCardError, TrainingDataError
from sparkml_prod.core.tables import NUMERIC, require_columns, schema_of

__all__ = [
    "CATEGORICAL_TYPES",
    "MISSING",
    "OTHER",
    "UNSEEN",
    "ColumnProfile",
    "ReferenceProfile",
    "column_of",
    "profile_columns",
    "reference_profile",
    "single_pass_aggregates",
]

Category = str | int | float
OTHER, UNSEEN, MISSING = "__other__", "__unseen__", "__missing__"
CATEGORICAL_TYPES = ("tinyint", "smallint", "int", "bigint", "float", "double", "string")
_INTEGRAL = ("tinyint", "smallint", "int", "bigint")
_KINDS = ("numeric", "categorical")
_FIX = "Recompute it with reference_profile() from the training data; do not edit it by hand."


def column_of(name: str) -> Column:
    """The column ``name``, quoted (names with dots or spaces are column names, not paths)."""
    return F.col("`" + name.replace("`", "``") + "`")


def _value(column: Column) -> Column:
    """A numeric column as double, NaN turned into null (both count as missing)."""
    value = column.cast("double")
    return F.when(F.isnan(value), F.lit(None).cast("double")).otherwise(value)


def _numeric_bin(value: Column, edges: Sequence[float]) -> Column:
    """Index of the right-closed bin of ``value``: the number of edges below it."""
    index = F.lit(0)
    for edge in edges:
        index = index + (value > F.lit(float(edge))).cast("int")
    return index


def single_pass_aggregates(df: DataFrame, aggregates: Sequence[Column]) -> dict[str, Any]:
    """Global aggregates of ``df`` computed by exactly one Spark job, no shuffle.

    A ``df.agg(...)`` is two jobs under adaptive query execution (the partial aggregation's
    map stage, then the result); here the aggregates are observed while each task streams
    its partition into the no-op sink, and the driver merges one small buffer per task.
    (The input's own shuffles, if it has any, still run as their own jobs.)

    Examples
    --------
    >>> single_pass_aggregates(spark.range(10), [F.count(F.lit(1)).alias("n")])
    {'n': 10}
    """
    observation = Observation(f"profile_{uuid.uuid4().hex}")
    df.observe(observation, *aggregates).write.format("noop").mode("overwrite").save()
    return dict(observation.get)


def _fail(where: str, problem: str) -> ModelCardError:
    return ModelCardError(f"Malformed reference profile: {where} {problem}. {_FIX}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_share(where: str, value: object) -> None:
    if not _is_number(value) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise _fail(where, f"must be a share in [0, 1]; got {value!r}")


@dataclass(frozen=True)
class ColumnProfile:
    """The frozen bins of one column and the share of reference rows in each.

    ``shares`` has one entry per value bin: ``len(edges) + 1`` for a numeric column,
    ``len(categories) + 2`` for a categorical one (the last two are ``__other__`` and
    ``__unseen__``, the latter 0). ``missing_rate`` is the share of the missing bin.
    :attr:`labels` and :attr:`expected` list all bins, the missing one last.

    Examples
    --------
    >>> c = ColumnProfile("x", "numeric", 10, (0.6, 0.4), 0.0, edges=(0.0,))
    >>> c.labels, c.expected
    (('(-inf, 0.0]', '(0.0, inf)', '__missing__'), (0.6, 0.4, 0.0))
    """

    name: str
    kind: str
    row_count: int
    shares: tuple[float, ...]
    missing_rate: float
    edges: tuple[float, ...] = ()
    categories: tuple[Category, ...] = ()
    other_categories: tuple[Category, ...] = ()

    def __post_init__(self) -> None:
        where = f"column {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise _fail("a column", f"needs a non-empty string name; got {self.name!r}")
        if self.kind not in _KINDS:
            raise _fail(where, f"has kind {self.kind!r}; expected one of {', '.join(_KINDS)}")
        if isinstance(self.row_count, bool) or not isinstance(self.row_count, int):
            raise _fail(where, f"row_count must be an int; got {self.row_count!r}")
        if self.row_count < 1:
            raise _fail(where, f"row_count must be at least 1; got {self.row_count}")
        if self.kind == "numeric":
            self._check_numeric(where)
        else:
            self._check_categorical(where)
        bins = len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 2
        if len(self.shares) != bins:
            raise _fail(where, f"needs {bins} shares (one per value bin); got {len(self.shares)}")
        for share in (*self.shares, self.missing_rate):
            _check_share(f"{where} share", share)
        total = math.fsum(self.expected)
        if abs(total - 1.0) > 1e-9:
            raise _fail(where, f"has shares (missing_rate included) summing to {total!r}, not 1")

    def _check_numeric(self, where: str) -> None:
        if self.categories or self.other_categories:
            raise _fail(where, "is numeric but has categories")
        for edge in self.edges:
            if not _is_number(edge) or not math.isfinite(edge):
                raise _fail(where, f"has edge {edge!r}; edges must be finite numbers")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise _fail(where, f"has edges {list(self.edges)} not strictly increasing")

    def _check_categorical(self, where: str) -> None:
        if self.edges:
            raise _fail(where, "is categorical but has edges")
        values = (*self.categories, *self.other_categories)
        if not (
            all(isinstance(v, str) for v in values)
            or all(_is_number(v) and math.isfinite(v) for v in values)  # type: ignore[arg-type]
        ):
            raise _fail(where, "needs categories that are all strings or all finite numbers")
        if len(set(values)) != len(values):
            raise _fail(where, "lists a category twice (categories and other_categories)")
        if self.shares[-1:] and self.shares[-1] != 0.0:
            raise _fail(where, f"has {UNSEEN} share {self.shares[-1]!r}; it must be 0")

    @property
    def labels(self) -> tuple[str, ...]:
        """One label per bin, the missing bin last."""
        if self.kind == "categorical":
            return (*(str(c) for c in self.categories), OTHER, UNSEEN, MISSING)
        bounds = ("-inf", *(repr(float(e)) for e in self.edges), "inf")
        closing = ["]"] * len(self.edges) + [")"]
        pairs = zip(bounds, bounds[1:], closing, strict=False)
        ranges = (f"({lo}, {hi}{end}" for lo, hi, end in pairs)
        return (*ranges, MISSING)

    @property
    def expected(self) -> tuple[float, ...]:
        """The reference share of every bin of :attr:`labels`, the missing rate last."""
        return (*self.shares, self.missing_rate)

    @property
    def string_categories(self) -> bool:
        """Whether the categories are strings (else numbers); False for a numeric column."""
        values = (*self.categories, *self.other_categories)
        return self.kind == "categorical" and bool(values) and isinstance(values[0], str)

    def bin_of(self, column: Column) -> Column:
        """An int column: the index in :attr:`labels` of each row's bin."""
        missing = len(self.shares)
        if self.kind == "numeric":
            value = _value(column)
            return F.when(value.isNull(), missing).otherwise(_numeric_bin(value, self.edges))
        value = column.cast("string") if self.string_categories else _value(column)
        index = F.when(value.isNull(), missing)
        for i, category in enumerate(self.categories):
            index = index.when(value == F.lit(category), i)
        if self.other_categories:
            index = index.when(value.isin(list(self.other_categories)), missing - 2)
        return index.otherwise(missing - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: numbers, strings and lists only."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "row_count": self.row_count}
        if self.kind == "numeric":
            data["edges"] = list(self.edges)
        else:
            data["categories"] = list(self.categories)
            data["other_categories"] = list(self.other_categories)
        return {**data, "shares": list(self.shares), "missing_rate": self.missing_rate}

    @classmethod
    def from_dict(cls, data: object) -> ColumnProfile:
        """The inverse of :meth:`to_dict`; anything else is a ``ModelCardError``."""
        if not isinstance(data, Mapping):
            raise _fail("a column", f"must be an object; got {type(data).__name__}")
        name, kind = data.get("name"), data.get("kind")
        where = f"column {name!r}"
        specific = ("edges",) if kind == "numeric" else ("categories", "other_categories")
        keys = {"name", "kind", "row_count", *specific, "shares", "missing_rate"}
        if set(data) != keys and kind in _KINDS:
            missing, unknown = sorted(keys - set(data)), sorted(set(data) - keys)
            raise _fail(where, f"has missing key(s) {missing} and unknown key(s) {unknown}")
        for key in set(data) & {"edges", "categories", "other_categories", "shares"}:
            if not isinstance(data[key], list):
                raise _fail(where, f"needs a list for {key!r}; got {data[key]!r}")
        return cls(
            name=name,  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            row_count=data.get("row_count"),  # type: ignore[arg-type]
            shares=tuple(data.get("shares", ())),
            missing_rate=data.get("missing_rate"),  # type: ignore[arg-type]
            edges=tuple(float(e) if _is_number(e) else e for e in data.get("edges", ())),
            categories=tuple(data.get("categories", ())),
            other_categories=tuple(data.get("other_categories", ())),
        )


@dataclass(frozen=True)
class ReferenceProfile:
    """Profiles of the model's features (from ``row_count`` training rows) and its score.

    JSON shape of :meth:`to_dict` (``score`` is null when no scores were profiled)::

        {"version": 1, "row_count": 8000,
         "features": [{"name": "x", "kind": "numeric", "row_count": 8000,
                       "edges": [0.0, 2.5], "shares": [0.6, 0.3, 0.1], "missing_rate": 0.0},
                      {"name": "plan_index", "kind": "categorical", "row_count": 8000,
                       "categories": [0.0, 1.0], "other_categories": [2.0],
                       "shares": [0.7, 0.25, 0.004, 0.0], "missing_rate": 0.046}],
         "score": {"name": "score", "kind": "numeric", ...}}

    Examples
    --------
    >>> p = ReferenceProfile(10, (ColumnProfile("x", "numeric", 10, (1.0,), 0.0),))
    >>> ReferenceProfile.from_dict(p.to_dict()) == p
    True
    """

    row_count: int
    features: tuple[ColumnProfile, ...]
    score: ColumnProfile | None = None
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if isinstance(self.row_count, bool) or not isinstance(self.row_count, int):
            raise _fail("row_count", f"must be an int; got {self.row_count!r}")
        if self.row_count < 1:
            raise _fail("row_count", f"must be at least 1; got {self.row_count}")
        columns = (*self.features, *([self.score] if self.score is not None else []))
        if not all(isinstance(c, ColumnProfile) for c in columns):
            raise _fail("features", "must hold ColumnProfile objects")
        names = [c.name for c in self.features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _fail("features", f"name column(s) {', '.join(repeated)} more than once")
        if self.score is not None and "score" in names:
            raise _fail(
                "features",
                "hold a feature named 'score', which drift reports confuse with the model's score",
            )

    def feature(self, name: str) -> ColumnProfile:
        """The profile of feature ``name``."""
        for column in self.features:
            if column.name == name:
                return column
        raise KeyError(f"No feature {name!r} in the reference profile.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (``json.dumps`` takes it as is)."""
        return {
            "version": self.version,
            "row_count": self.row_count,
            "features": [c.to_dict() for c in self.features],
            "score": self.score.to_dict() if self.score is not None else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> ReferenceProfile:
        """The inverse of :meth:`to_dict`, strict: a malformed profile is a ``ModelCardError``."""
        if not isinstance(data, Mapping):
            raise _fail("the profile", f"must be an object; got {type(data).__name__}")
        keys = {"version", "row_count", "features", "score"}
        if set(data) != keys:
            missing, unknown = sorted(keys - set(data)), sorted(set(data) - keys)
            raise _fail("the profile", f"has missing key(s) {missing} and unknown key(s) {unknown}")
        if data["version"] != cls.version:
            raise ModelCardError(
                f"Reference profile version {data['version']!r} is not one this library reads "
                f"(version {cls.version}). Recompute it with this release's reference_profile()."
            )
        if not isinstance(data["features"], list):
            raise _fail("features", f"must be a list; got {data['features']!r}")
        score = data["score"]
        return cls(
            row_count=data["row_count"],
            features=tuple(ColumnProfile.from_dict(c) for c in data["features"]),
            score=ColumnProfile.from_dict(score) if score is not None else None,
        )


def profile_columns(
    df: DataFrame,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    *,
    bins: int = 10,
    rare_share: float = 0.01,
    accuracy: int = 10_000,
    table: str = "reference rows",
) -> tuple[tuple[ColumnProfile, ...], int]:
    """Profile the columns of ``df``: two passes over it, whatever the number of columns.

    Returns the profiles (numeric columns first, in the order given) and the row count.
    ``accuracy`` is ``percentile_approx``'s (relative error ``1 / accuracy``).

    Raises
    ------
    SchemaError
        A column missing or of a type it cannot be profiled as (before any Spark job).
    TrainingDataError
        ``df`` has no rows.

    Examples
    --------
    >>> df = spark.createDataFrame([(0.0,), (0.0,), (1.0,), (None,)], "x double")
    >>> profile_columns(df, ["x"], bins=2)[0][0].shares
    (0.5, 0.25)
    """
    names = [*numeric, *categorical]
    if not names or len(set(names)) != len(names):
        raise ValueError(
            "The 'numeric' and 'categorical' parameters of profile_columns must name at least "
            f"one column, each once. Got numeric={list(numeric)}, categorical={list(categorical)}."
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 1000:
        raise ValueError(
            f"The 'bins' parameter of profile_columns must be an int in [2, 1000]. Got {bins!r}."
        )
    if not _is_number(rare_share) or not 0.0 <= rare_share < 1.0:
        raise ValueError(
            "The 'rare_share' parameter of profile_columns must be a number in [0, 1). "
            f"Got {rare_share!r} instead."
        )
    if isinstance(accuracy, bool) or not isinstance(accuracy, int) or accuracy < 1:
        raise ValueError(
            f"The 'accuracy' parameter of profile_columns must be a positive int. Got {accuracy!r}."
        )
    required = {**dict.fromkeys(numeric, NUMERIC), **dict.fromkeys(categorical, CATEGORICAL_TYPES)}
    require_columns(df, required, table=table)
    types = schema_of(df)

    edges: dict[str, tuple[float, ...]] = {}
    rows: int | None = None
    if numeric:
        quantiles = [i / bins for i in range(1, bins)]
        aggregates = [F.count(F.lit(1)).alias("n")]
        for j, name in enumerate(numeric):
            value = _value(column_of(name))
            aggregates += [
                F.percentile_approx(value, quantiles, accuracy).alias(f"q{j}"),
                F.max(value).alias(f"m{j}"),
            ]
        found = single_pass_aggregates(df, aggregates)
        rows = int(found["n"])
        if rows == 0:
            raise _empty(table)
        for j, name in enumerate(numeric):
            top, points = found[f"m{j}"], found[f"q{j}"] or []
            kept = {float(q) for q in points if q is not None and math.isfinite(q) and q < top}
            edges[name] = tuple(sorted(kept))

    keys = []
    for j, name in enumerate(names):
        kind = types[name]
        number, text = F.lit(None).cast("double"), F.lit(None).cast("string")
        if name in edges:
            value = _value(column_of(name))
            key = F.when(value.isNull(), -1).otherwise(_numeric_bin(value, edges[name]))
        elif kind == "string":
            key, text = F.lit(0), column_of(name)
        else:
            key, number = F.lit(0), _value(column_of(name))
        keys.append(
            F.struct(F.lit(j).alias("c"), key.alias("b"), number.alias("v"), text.alias("s"))
        )
    grouped = df.select(F.explode(F.array(*keys)).alias("k")).select("k.*")
    counts = grouped.groupBy("c", "b", "v", "s").count().collect()
    if rows is None:
        rows = sum(int(r["count"]) for r in counts if r["c"] == 0)
        if rows == 0:
            raise _empty(table)

    profiles = []
    for j, name in enumerate(names):
        mine = [r for r in counts if r["c"] == j]
        if name in edges:
            per_bin = [0] * (len(edges[name]) + 1)
            for r in mine:
                if r["b"] >= 0:
                    per_bin[r["b"]] = int(r["count"])
            missing = sum(int(r["count"]) for r in mine if r["b"] < 0)
            profiles.append(
                ColumnProfile(
                    name,
                    "numeric",
                    rows,
                    tuple(k / rows for k in per_bin),
                    missing / rows,
                    edges=edges[name],
                )
            )
        else:
            profiles.append(_categorical(name, types[name], mine, rows, rare_share))
    return tuple(profiles), rows


def _categorical(
    name: str, kind: str, counts: Sequence[Any], rows: int, rare_share: float
) -> ColumnProfile:
    """Categories by share (then value), the rare ones pooled, from per-value counts."""
    per_value: dict[Category, int] = {}
    missing = 0
    for r in counts:
        value = r["s"] if kind == "string" else r["v"]
        if value is None:
            missing += int(r["count"])
        else:
            per_value[int(value) if kind in _INTEGRAL else value] = int(r["count"])
    ordered = sorted(per_value, key=lambda v: (-per_value[v], v))
    kept = [v for v in ordered if per_value[v] / rows >= rare_share]
    other = sorted(v for v in ordered if per_value[v] / rows < rare_share)
    shares = [per_value[v] / rows for v in kept]
    shares += [sum(per_value[v] for v in other) / rows, 0.0]
    return ColumnProfile(
        name,
        "categorical",
        rows,
        tuple(shares),
        missing / rows,
        categories=tuple(kept),
        other_categories=tuple(other),
    )


def _empty(table: str) -> TrainingDataError:
    return TrainingDataError(
        f"Table '{table}' has no rows to profile; a reference profile needs the training "
        "rows (features) and the test snapshot's scored rows (score). Check the split's "
        "as-of dates and filters."
    )


def reference_profile(
    training: DataFrame,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    *,
    scored: DataFrame | None = None,
    score_col: str = "score",
    bins: int = 10,
    rare_share: float = 0.01,
    accuracy: int = 10_000,
) -> ReferenceProfile:
    """The reference profile of a model: its features on ``training``, its score on ``scored``.

    Parameters
    ----------
    training : DataFrame
        The rows the deployed model was fitted on (the training matrix's training rows,
        or every row after a refit).
    numeric, categorical : sequence of str
        Feature columns profiled by quantile bins, and by category (integer or double index
        columns of a ``StringIndexer``, or strings).
    scored : DataFrame, optional
        The test snapshot's scored rows, with ``score_col``; without it ``score`` is None.
    bins, rare_share, accuracy
        About ``bins`` quantile bins per numeric column; categories rarer than
        ``rare_share`` pooled into ``__other__``; ``percentile_approx`` accuracy.

    Examples
    --------
    >>> profile = reference_profile(matrix, ["purchases_30d"], ["plan_index"], scored=test)
    >>> json.dumps(profile.to_dict())  # into the model card
    """
    features, rows = profile_columns(
        training,
        numeric,
        categorical,
        bins=bins,
        rare_share=rare_share,
        accuracy=accuracy,
        table="training rows",
    )
    score = None
    if scored is not None:
        (score,), _ = profile_columns(
            scored, [score_col], bins=bins, accuracy=accuracy, table="scored test rows"
        )
    return ReferenceProfile(rows, features, score)
