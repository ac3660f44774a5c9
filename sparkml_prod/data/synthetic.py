"""A realistic synthetic clickstream, generated inside Spark at any size.

Everything is a Spark SQL column expression (no Python UDF, nothing large on the
driver, no shuffle): users come from ``spark.range``, user-weeks from ``sequence`` +
``explode``, sessions and events from further explodes. Every random number is a hash
of ``(seed, stream name, user_id, week, session, position)``, never ``F.rand``, so a
:class:`SyntheticSpec` gives the same rows whatever the partitions, cores or time zone.

Generative story
----------------
* **Users** sign up up to two years before ``start`` (30%) or uniformly in
  ``[start, end)``; country (US 40%, mid-size markets, a rare tail), platform and
  acquisition channel have skewed frequencies.
* **Latent traits**: activity, lognormal (sigma 0.9, mean 1: a few very active users),
  and purchase propensity, normal, mildly correlated with activity. Both drift: per-user
  sinusoids (periods of 1.5 to 10 months, random phases). New users are twice as
  active in their first weeks. 45% of users churn (exponential, mean 6 months after
  signup); afterwards 3% of their sessions survive.
* **Sessions**: a Poisson count per user-week with mean activity x drift x a mild
  yearly season (December peak); the day follows weekday weights (busier weekends),
  the hour a diurnal profile (evening peak). In about 8% of weeks a user starts a
  *shopping mission* of 1-3 weeks: twice the sessions, more browsing and carting in its
  first week, more buying in the later ones.
* **Funnel** per session: page views, maybe searches, product views, add-to-cart (and a
  remove), one purchase; each step more likely with the propensity at that time, a paid
  plan (plus, premium), the holiday season (20 Nov - 24 Dec) and missions. Categories
  follow the user's two favourites and a skewed popularity; amounts are lognormal
  around a per-user price level times a category price factor.
* **Attributes** change slowly: a plan at signup (paid likelier for high propensity), up
  to two later plan changes, and one country move for 5% of users.

With the defaults, whether a user purchases in the 30 days after an as-of date is
predictable from past behaviour but not trivially: gradient boosting on 7/30/90-day
counts and recency reaches a test ROC AUC of about 0.82, days since the last purchase
alone about 0.75.
"""

from __future__ import annotations

import calendar
import datetime
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

# fmt: off
__all__ = [
    "EVENTS_SCHEMA", "EVENT_TYPES", "PLANS", "SyntheticSpec", "USERS_SCHEMA",
    "USER_ATTRIBUTES_SCHEMA", "generate_events", "generate_user_attributes", "generate_users",
]

#: Event types in funnel order.
EVENT_TYPES: tuple[str, ...] = (
    "page_view", "search", "product_view", "add_to_cart", "remove_from_cart", "purchase",
)
#: Plans of the user attributes, cheapest first.
PLANS: tuple[str, ...] = ("free", "plus", "premium")

#: One row per user; ``country`` is the country at signup.
USERS_SCHEMA = T.StructType([
    T.StructField("user_id", T.LongType(), nullable=False),
    T.StructField("signup_time", T.TimestampType()),
    T.StructField("country", T.StringType()),
    T.StructField("platform", T.StringType()),
    T.StructField("acquisition_channel", T.StringType()),
])
#: One row per user and change; a row is valid from ``valid_from`` to the next one.
USER_ATTRIBUTES_SCHEMA = T.StructType([
    T.StructField("user_id", T.LongType(), nullable=False),
    T.StructField("valid_from", T.TimestampType()),
    T.StructField("plan", T.StringType()),
    T.StructField("country", T.StringType()),
])
#: One row per event; ``amount`` only for purchases, ``product_category`` not for
#: page views and searches.
EVENTS_SCHEMA = T.StructType([
    T.StructField("user_id", T.LongType(), nullable=False),
    T.StructField("event_time", T.TimestampType()),
    T.StructField("event_type", T.StringType()),
    T.StructField("session_id", T.StringType()),
    T.StructField("amount", T.DoubleType()),
    T.StructField("product_category", T.StringType()),
])

_COUNTRIES = (
    ("US", 40), ("GB", 11), ("DE", 9), ("IN", 8), ("FR", 7), ("BR", 7), ("CA", 5),
    ("ES", 4), ("IT", 3), ("JP", 2.5), ("MX", 1.5), ("NL", 1), ("SE", 0.5),
    ("PL", 0.3), ("NG", 0.1), ("IS", 0.07), ("LU", 0.03),
)
_PLATFORMS = (("ios", 45), ("android", 37), ("web", 18))
_CHANNELS = (
    ("organic", 40), ("paid_search", 22), ("social", 15), ("referral", 10),
    ("email", 8), ("affiliate", 4), ("display", 1),
)
_CATEGORIES = (  # (name, popularity, price factor)
    ("fashion", 18, 0.8), ("electronics", 14, 3.0), ("home", 12, 1.2),
    ("beauty", 10, 0.6), ("books", 8, 0.4), ("sports", 7, 1.3), ("toys", 6, 0.7),
    ("grocery", 6, 0.3), ("garden", 5, 1.1), ("health", 4, 0.6), ("automotive", 3, 1.8),
    ("jewelry", 2.5, 2.5), ("music", 2, 0.5), ("pet", 1.5, 0.5), ("office", 1, 0.9),
)
_CATEGORY_WEIGHTS = [(name, weight) for name, weight, _ in _CATEGORIES]
_WEEKDAY_WEIGHTS = (0.95, 0.9, 0.9, 0.95, 1.0, 1.15, 1.15)  # Monday .. Sunday
_HOUR_WEIGHTS = (3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 7, 8, 8, 7, 7, 7, 8, 9, 10, 10, 9, 7, 5)
_EARLY_SHARE, _EARLY_DAYS = 0.3, 730  # users who signed up before start, how long before
_CHURN_SHARE, _CHURN_DAYS, _CHURN_KEEP = 0.45, 180, 0.03  # churners, mean life, sessions kept
_NOVELTY_DAYS = 30  # new users are more active, decaying with this time constant
_SEASON_AMP, _SEASON_PEAK = 0.1, 350  # yearly activity cycle, peak day (days since 1970)
_MISSION_START, _MISSION_WEEKS = 0.08, 3  # weekly start probability, longest mission
_MISSION_ACTIVITY, _MISSION_INTEREST, _MISSION_CLOSING = 2.0, 1.0, 1.2
_EVENTS_PER_SESSION = 6.45  # events per session x mean drift x missions (measured)
_DAY, _WEEK = 86_400, 7 * 86_400
# fmt: on


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: how many users, which period, which seed, how busy.

    Parameters
    ----------
    n_users : int
        Number of users (ids ``0 .. n_users - 1``).
    start : datetime.date
        First day of events (UTC).
    end : datetime.date
        Events are strictly before this day (UTC).
    seed : int
        Seed of every random draw: same spec, same rows.
    events_per_user_per_day : float
        Activity scale: there are about ``n_users * days * events_per_user_per_day``
        events in all.
    drift_from : datetime.date, optional
        Injected drift, for monitoring demos and tests: purchases from this day on (UTC)
        have their amount multiplied by ``drift_amount_factor``; nothing else changes.
    drift_amount_factor : float
        The factor of that drift (default 1: none).

    Examples
    --------
    >>> spec = SyntheticSpec(n_users=200, start=datetime.date(2024, 1, 1),
    ...                      end=datetime.date(2024, 3, 1), seed=7)
    >>> spec.days
    60
    """

    n_users: int = 10_000
    start: datetime.date = datetime.date(2023, 1, 1)
    end: datetime.date = datetime.date(2024, 7, 1)
    seed: int = 42
    events_per_user_per_day: float = 0.3
    drift_from: datetime.date | None = None
    drift_amount_factor: float = 1.0

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        rate = self.events_per_user_per_day
        checks: tuple[tuple[str, Callable[[], bool], str], ...] = (
            ("n_users", lambda: is_int(self.n_users) and self.n_users >= 1, "an int >= 1"),
            ("start", lambda: isinstance(self.start, datetime.date), "a datetime.date"),
            ("end", lambda: isinstance(self.end, datetime.date), "a datetime.date"),
            ("end", lambda: self.end > self.start, f"a date after start ({self.start})"),
            ("seed", lambda: is_int(self.seed) and abs(self.seed) < 2**63, "a 64-bit int"),
            (
                "events_per_user_per_day",
                lambda: (is_int(rate) or isinstance(rate, float)) and rate > 0,
                "a number > 0",
            ),
            (
                "drift_from",
                lambda: self.drift_from is None or isinstance(self.drift_from, datetime.date),
                "a datetime.date or None",
            ),
            (
                "drift_amount_factor",
                lambda: (
                    isinstance(self.drift_amount_factor, (int, float))
                    and not isinstance(self.drift_amount_factor, bool)
                    and self.drift_amount_factor > 0
                ),
                "a number > 0",
            ),
        )
        for field, ok, expected in checks:
            if not ok():
                raise ValueError(
                    f"The '{field}' field of SyntheticSpec must be {expected}. "
                    f"Got {getattr(self, field)!r} instead."
                )

    @property
    def days(self) -> int:
        """Number of days in ``[start, end)``."""
        return (self.end - self.start).days


def _epoch(day: datetime.date) -> int:
    return calendar.timegm(day.timetuple())


def _sessions_per_user_day(spec: SyntheticSpec) -> float:
    """Base session rate such that the spec gets about n_users * days * rate events.

    Integrates, on a grid of at most 100 steps, the share of users signed up and not
    churned, their novelty boost and the season over the period.
    """
    start, days = _epoch(spec.start) / _DAY, spec.days
    n_early, n_late = 52, min(days, 100)
    signups = [
        (start - _EARLY_DAYS * (i + 0.5) / n_early, _EARLY_SHARE / n_early) for i in range(n_early)
    ]
    signups += [
        (start + days * (i + 0.5) / n_late, (1 - _EARLY_SHARE) / n_late) for i in range(n_late)
    ]
    load = 0.0
    for step in range(n_late):
        t = start + days * (step + 0.5) / n_late
        season = 1 + _SEASON_AMP * math.cos(2 * math.pi * (t - _SEASON_PEAK) / 365.25)
        for s, share in signups:
            if s <= t:  # a signup in this step is live for half of it
                churned = _CHURN_SHARE * (1 - math.exp((s - t) / _CHURN_DAYS))
                alive = (1 - churned * (1 - _CHURN_KEEP)) * (0.5 if s == t else 1.0)
                load += share * alive * (1 + math.exp((s - t) / _NOVELTY_DAYS)) * season
    return spec.events_per_user_per_day * n_late / (load * _EVENTS_PER_SESSION)


def _u(seed: int, stream: str, *keys: str) -> str:
    """SQL of a uniform in (0, 1): 53 bits of a hash of the seed, a stream name and keys.

    The random helpers build SQL text: one JVM call per expression instead of dozens.
    """
    bits = f"xxhash64({seed}L, '{stream}', {', '.join(keys)}) & {(1 << 53) - 1}L"
    return f"(({bits}) + 0.5D) / {float(1 << 53)!r}D"


def _unif(seed: int, stream: str, *keys: str) -> Column:
    return F.expr(_u(seed, stream, *keys))


def _z(seed: int, stream: str, *keys: str) -> str:
    """SQL of a standard normal, by Box-Muller from two hashed uniforms."""
    u1, u2 = _u(seed, stream + ".1", *keys), _u(seed, stream + ".2", *keys)
    return f"(sqrt(ln({u1}) * -2.0D) * cos({u2} * {2 * math.pi!r}D))"


def _normal(seed: int, stream: str, *keys: str) -> Column:
    return F.expr(_z(seed, stream, *keys))


def _choice(u: str, items: Sequence[tuple[object, float]]) -> Column:
    """Inverse CDF of a categorical distribution of (value, weight) pairs at SQL ``u``."""
    total = sum(weight for _, weight in items)
    bounds = list(itertools.accumulate(weight / total for _, weight in items))[:-1]
    sql = [f"'{v}'" if isinstance(v, str) else repr(v) for v, _ in items]
    whens = [f"WHEN {u} < {b!r}D THEN {v}" for v, b in zip(sql[:-1], bounds, strict=True)]
    return F.expr(f"CASE {' '.join(whens)} ELSE {sql[-1]} END")


def _geometric(u: Column, p: float) -> Column:
    """Failures before the first success, success probability ``p``."""
    return F.floor(F.log(u) / math.log(1.0 - p)).cast("int")


def _poisson(lam: str, u: str, z: str) -> Column:
    """Poisson draw: inverse CDF below a mean of 2, Cornish-Fisher above (error < 1%).

    Takes SQL text; ``lam`` and ``u`` should be column names, they appear many times.
    """
    terms = [
        f"exp(ln(greatest({lam}, 1.0E-300D)) * {k} - {lam} - {math.lgamma(k + 1)!r}D)"
        for k in range(10)
    ]
    whens = [f"WHEN {u} <= {' + '.join(terms[: k + 1])} THEN {k}" for k in range(10)]
    approx = f"floor({lam} + sqrt({lam}) * {z} + ({z} * {z} - 1.0D) / 6.0D + 0.5D)"
    # P(N > 10 | mean 2) < 1e-5
    return F.expr(f"CAST(IF({lam} < 2.0D, CASE {' '.join(whens)} ELSE 10 END, {approx}) AS INT)")


def _sigmoid(x: Column) -> Column:
    return 1.0 / (1.0 + F.exp(-x))


def _wave(t_s: Column, trait: str) -> Column:
    """A slow per-user sinusoid of absolute time (epoch seconds)."""
    cycles = t_s / _DAY / F.col(f"{trait}_period")
    return F.col(f"{trait}_amp") * F.sin(2 * math.pi * cycles + F.col(f"{trait}_phase"))


def _plan_level_at(t_s: Column) -> Column:
    c1, c2 = F.col("change1_s"), F.col("change2_s")
    return (
        F.when(c2.isNotNull() & (t_s >= c2), F.col("level2"))
        .when(c1.isNotNull() & (t_s >= c1), F.col("level1"))
        .otherwise(F.col("level0"))
    )


def _next_level(level: Column, u: Column) -> Column:
    """A plan change: free upgrades, premium downgrades, plus goes either way."""
    return (
        F.when(level == 0, F.when(u < 0.8, 1).otherwise(2))
        .when(level == 2, 1)
        .otherwise(F.when(u < 0.55, 2).otherwise(0))
    )


def _mission_week(seed: int) -> Column:
    """Weeks since the start of the current shopping mission; null outside missions."""
    since = []
    for back in range(_MISSION_WEEKS):
        keys = ("user_id", f"week - {back}")
        length = F.floor(_unif(seed, "mission.len", *keys) * _MISSION_WEEKS)
        started = (_unif(seed, "mission", *keys) < _MISSION_START) & (length >= back)
        since.append(F.when(started, F.lit(back)))
    return F.least(*since)


def _conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """``df.to(schema)``, also making nullable what the schema says is (``to`` keeps NOT NULL)."""

    def conform(field: T.StructField) -> Column:
        col = F.col(field.name)
        return (F.when(col.isNotNull(), col) if field.nullable else col).alias(field.name)

    return df.select(*map(conform, schema)).to(schema)


def _latent_users(spark: SparkSession, spec: SyntheticSpec, parts: int | None) -> DataFrame:
    """One row per user: the public user columns and the hidden traits."""
    seed = spec.seed
    start_s, end_s = _epoch(spec.start), _epoch(spec.end)
    if parts is None:
        try:
            parts = spark.sparkContext.defaultParallelism
        except Exception:  # Spark Connect has no SparkContext
            parts = 2
        expected = spec.n_users * spec.days * spec.events_per_user_per_day
        parts = max(parts, math.ceil(expected / 4_000_000))

    def u(stream: str) -> Column:
        return _unif(seed, stream, "user_id")

    def z(stream: str) -> Column:
        return _normal(seed, stream, "user_id")

    def choice(stream: str, items: Sequence[tuple[object, float]]) -> Column:
        return _choice(_u(seed, stream, "user_id"), items)

    def later(after: Column, stream: str) -> Column:  # uniform in [after, end)
        return (after + F.floor(u(stream) * (F.lit(end_s) - after))).cast("long")

    early = start_s - 1 - F.floor(u("signup") * _EARLY_DAYS * _DAY)
    signup = F.when(u("signup.early") < _EARLY_SHARE, early)
    signup = signup.otherwise(start_s + F.floor(u("signup") * (end_s - start_s)))
    plan_score = 0.6 * F.col("prop_z") + 0.8 * z("plan")
    free_q, plus_q = NormalDist().inv_cdf(0.75), NormalDist().inv_cdf(0.93)
    users = spark.range(0, spec.n_users, 1, parts).select(
        F.col("id").alias("user_id"),
        signup.cast("long").alias("signup_s"),
        choice("country", _COUNTRIES).alias("country"),
        choice("platform", _PLATFORMS).alias("platform"),
        choice("channel", _CHANNELS).alias("acquisition_channel"),
        F.exp(0.9 * z("activity") - 0.405).alias("activity"),
        (0.3 * z("activity") + math.sqrt(0.91) * z("propensity")).alias("prop_z"),
        (0.3 + 0.8 * u("act.amp")).alias("act_amp"),
        (0.5 + 0.8 * u("prop.amp")).alias("prop_amp"),
        (60 + 240 * u("act.period")).alias("act_period"),
        (40 + 140 * u("prop.period")).alias("prop_period"),
        (2 * math.pi * u("act.phase")).alias("act_phase"),
        (2 * math.pi * u("prop.phase")).alias("prop_phase"),
        (math.log(25.0) + 0.45 * z("price")).alias("log_price"),
        choice("fav1", _CATEGORY_WEIGHTS).alias("fav1"),
        choice("fav2", _CATEGORY_WEIGHTS).alias("fav2"),
    )
    signup_s, change1 = F.col("signup_s"), F.col("change1_s")
    churn = signup_s + F.floor(-F.log(u("churn.t")) * _CHURN_DAYS * _DAY)
    users = users.select(
        "*",
        F.when(u("churn") < _CHURN_SHARE, churn).cast("long").alias("churn_s"),
        F.when(plan_score < free_q, 0).when(plan_score < plus_q, 1).otherwise(2).alias("level0"),
        F.when(u("change1") < 0.35, later(signup_s, "change1.t")).alias("change1_s"),
        F.when(u("move") < 0.05, later(signup_s, "move.t")).alias("move_s"),
        choice("country2", _COUNTRIES).alias("country2"),
    )
    users = users.select(
        "*",
        _next_level(F.col("level0"), u("level1")).alias("level1"),
        F.when(change1.isNotNull() & (u("change2") < 0.4), later(change1, "change2.t")).alias(
            "change2_s"
        ),
    )
    return users.withColumn("level2", _next_level(F.col("level1"), u("level2")))


def generate_users(
    spark: SparkSession, spec: SyntheticSpec, *, num_partitions: int | None = None
) -> DataFrame:
    """Users with their signup time and profile, as in :data:`USERS_SCHEMA`.

    ``num_partitions`` (default: enough for the expected size) never changes the rows.

    Examples
    --------
    >>> generate_users(spark, SyntheticSpec(n_users=100)).count()
    100
    """
    return (
        _latent_users(spark, spec, num_partitions)
        .select(
            "user_id",
            F.timestamp_seconds("signup_s").alias("signup_time"),
            "country",
            "platform",
            "acquisition_channel",
        )
        .transform(_conform, USERS_SCHEMA)
    )


def generate_user_attributes(
    spark: SparkSession, spec: SyntheticSpec, *, num_partitions: int | None = None
) -> DataFrame:
    """Slowly changing attributes, as in :data:`USER_ATTRIBUTES_SCHEMA`.

    Each user has a row at signup and 0 to 3 later ones (plan changes, a country move),
    all before ``spec.end``. A row holds the full state from ``valid_from`` until the
    user's next row. Plans are from :data:`PLANS`; paid plans raise purchase propensity.

    Examples
    --------
    >>> attributes = generate_user_attributes(spark, SyntheticSpec(n_users=100))
    >>> attributes.groupBy("user_id").count().agg({"count": "min"}).first()[0]
    1
    """
    times = F.array_distinct(
        F.array_compact(F.array("signup_s", "change1_s", "change2_s", "move_s"))
    )
    t, country, country2 = F.col("t"), F.col("country"), F.col("country2")
    moved = F.col("move_s").isNotNull() & (t >= F.col("move_s"))
    new_country = F.when(country2 != country, country2)
    new_country = new_country.when(country == "US", "GB").otherwise("US")
    users = _latent_users(spark, spec, num_partitions)
    return (
        users.select("*", F.explode(times).alias("t"))
        .select(
            "user_id",
            F.timestamp_seconds(t).alias("valid_from"),
            F.element_at(F.array(*map(F.lit, PLANS)), _plan_level_at(t) + 1).alias("plan"),
            F.when(moved, new_country).otherwise(country).alias("country"),
        )
        .transform(_conform, USER_ATTRIBUTES_SCHEMA)
    )


def _sessions(users: DataFrame, spec: SyntheticSpec) -> DataFrame:
    """Sessions (user_id, week, k, t0 = start second) with the user's traits."""
    seed, start_s, end_s = spec.seed, _epoch(spec.start), _epoch(spec.end)
    week_keys, session_keys = ("user_id", "week"), ("user_id", "week", "k")
    first_s = F.greatest(F.col("signup_s"), F.lit(start_s))
    first_week = F.floor((first_s - start_s) / _WEEK).cast("long")
    last_week = F.lit((end_s - 1 - start_s) // _WEEK).cast("long")
    weeks = (
        users.where(first_s < end_s)
        .select(
            "*",
            first_s.alias("first_s"),
            F.explode(F.sequence(first_week, last_week)).alias("week"),
        )
        .select("*", _mission_week(seed).alias("mission"))
    )

    mid_s = start_s + F.col("week") * _WEEK + _WEEK // 2
    season = 1.0 + _SEASON_AMP * F.cos(2 * math.pi * (mid_s / _DAY - _SEASON_PEAK) / 365.25)
    novelty = 1.0 + F.exp((F.col("signup_s") - mid_s) / (_NOVELTY_DAYS * _DAY))
    mission = F.when(F.col("mission").isNotNull(), _MISSION_ACTIVITY).otherwise(1.0)
    per_week = 7 * _sessions_per_user_day(spec)
    lam = per_week * F.col("activity") * F.exp(_wave(mid_s, "act")) * season * novelty * mission
    n_sessions = _poisson("lam", "u_n", _z(seed, "sessions", *week_keys))
    n = F.col("n_sessions")
    sessions = weeks.select("*", lam.alias("lam"), _unif(seed, "sessions", *week_keys).alias("u_n"))
    sessions = sessions.select("*", n_sessions.alias("n_sessions"))
    ks = F.explode(F.when(n > 0, F.sequence(F.lit(0), n - 1))).alias("k")
    uniforms = [_unif(seed, s, *session_keys).alias(f"u_{s}") for s in ("day", "hour", "sec")]
    sessions = sessions.select("*", ks).select("*", *uniforms)

    def su(stream: str) -> Column:
        return _unif(seed, stream, *session_keys)

    wd0 = spec.start.weekday()
    day = _choice("u_day", [(d, _WEEKDAY_WEIGHTS[(wd0 + d) % 7]) for d in range(7)])
    hour = _choice("u_hour", list(enumerate(_HOUR_WEIGHTS)))
    t0 = start_s + F.col("week") * _WEEK + day * _DAY + hour * 3600 + F.floor(F.col("u_sec") * 3600)
    churn, t0c, week_s = F.col("churn_s"), F.col("t0"), start_s + F.col("week") * _WEEK
    alive = churn.isNull() | (t0c < churn) | (su("churn.keep") < _CHURN_KEEP)
    exact = (t0c >= F.col("first_s")) & (t0c < end_s) & alive
    # Spark pushes the filter below the projections, copying t0's hashes into it: a cheap
    # test first, true for all sessions of weeks that are whole, live and in the period.
    whole = (week_s >= F.col("first_s")) & (week_s + _WEEK <= end_s)
    whole = whole & (churn.isNull() | (week_s + _WEEK <= churn))
    sessions = sessions.select("*", t0.cast("long").alias("t0"))
    return sessions.where(whole | exact)


def generate_events(
    spark: SparkSession, spec: SyntheticSpec, *, num_partitions: int | None = None
) -> DataFrame:
    """The clickstream, as in :data:`EVENTS_SCHEMA`, built without any shuffle.

    Events lie in ``[spec.start, spec.end)`` and never before the user's signup, at
    second resolution (UTC). A session (``session_id``: 32 hex digits) has its events in
    funnel order, about 45 seconds apart. ``num_partitions`` never changes the rows.

    Examples
    --------
    >>> events = generate_events(spark, SyntheticSpec(n_users=100))
    >>> sorted(r.event_type for r in events.select("event_type").distinct().collect())
    ['add_to_cart', 'page_view', 'product_view', 'purchase', 'remove_from_cart', 'search']
    """
    seed, end_s = spec.seed, _epoch(spec.end)
    sessions = _sessions(_latent_users(spark, spec, num_partitions), spec)
    session_keys = ("user_id", "week", "k")

    def su(stream: str) -> Column:
        return _unif(seed, stream, *session_keys)

    # funnel: propensity now = trait + drift + plan + holiday; missions research, then buy
    t0 = F.col("t0")
    date = F.date_from_unix_date((t0 / _DAY).cast("int"))
    holiday = ((F.month(date) == 11) & (F.dayofmonth(date) >= 20)) | (
        (F.month(date) == 12) & (F.dayofmonth(date) <= 24)
    )
    level, mission = _plan_level_at(t0), F.col("mission")
    prop = (
        F.col("prop_z")
        + _wave(t0, "prop")
        + F.when(level == 1, 0.5).when(level == 2, 1.0).otherwise(0.0)
        + F.when(holiday, 0.35).otherwise(0.0)
    )
    interest = F.when(mission.isNotNull(), _MISSION_INTEREST).otherwise(0.0)
    closing = F.when(mission == 0, -_MISSION_CLOSING).when(mission > 0, _MISSION_CLOSING)
    sessions = sessions.select(
        "*", prop.alias("prop"), interest.alias("interest"), closing.otherwise(0.0).alias("closing")
    )
    prop, interest = F.col("prop"), F.col("interest")
    browse = su("browse") < _sigmoid(0.2 + 0.6 * prop + interest)
    cart = browse & (su("cart") < _sigmoid(-1.4 + 1.2 * prop + interest))
    buy = cart & (su("buy") < _sigmoid(-0.8 + 0.3 * prop + F.col("closing")))
    counts = [
        1 + _geometric(su("n.page_view"), 0.55),
        F.when(su("search") < 0.45, 1 + _geometric(su("n.search"), 0.6)).otherwise(0),
        F.when(browse, 1 + _geometric(su("n.product_view"), 0.4)).otherwise(0),
        F.when(cart, 1 + _geometric(su("n.add_to_cart"), 0.7)).otherwise(0),
        F.when(cart & (su("remove") < 0.2), 1).otherwise(0),
        F.when(buy, 1).otherwise(0),
    ]
    repeats = zip(EVENT_TYPES, counts, strict=True)
    types = F.concat(*[F.array_repeat(F.lit(event), n) for event, n in repeats])
    focus = F.when(su("focus") < 0.55, F.col("fav1")).when(su("focus") < 0.75, F.col("fav2"))
    bits = [F.expr(f"xxhash64({seed}L, '{s}', {', '.join(session_keys)})") for s in "ab"]
    session_id = F.concat(*[F.lpad(F.lower(F.hex(b)), 16, "0") for b in bits])  # 128 bits
    sessions = sessions.select(  # per session, before the explode repeats them per event
        "user_id",
        "week",
        "k",
        "t0",
        "fav1",
        "log_price",
        session_id.alias("session_id"),
        focus.otherwise(_choice(_u(seed, "focus.any", *session_keys), _CATEGORY_WEIGHTS)).alias(
            "focus"
        ),
        types.alias("types"),
    )
    # _outer (types is never empty): Spark would otherwise push a "size(types) > 0" filter,
    # with a copy of every hash above, below the projections
    event_types = F.posexplode_outer("types").alias("pos", "event_type")
    events = sessions.select("*", event_types).drop("types")

    # per event: time within the session, category, amount
    def eu(stream: str) -> Column:
        return _unif(seed, stream, *session_keys, "pos")

    etype = F.col("event_type")
    viewed = F.when(eu("cat") < 0.6, F.col("focus")).when(eu("cat") < 0.8, F.col("fav1"))
    category = (
        F.when(etype.isin("page_view", "search"), F.lit(None).cast("string"))
        .when(
            etype == "product_view",
            viewed.otherwise(_choice(_u(seed, "cat.any", *session_keys, "pos"), _CATEGORY_WEIGHTS)),
        )
        .otherwise(F.col("focus"))
    )
    factor = F.create_map(*[F.lit(x) for c, _, f in _CATEGORIES for x in (c, math.log(f))])
    log_amount = F.col("log_price") + factor[F.col("product_category")]
    log_amount = log_amount + 0.5 * _normal(seed, "amount", *session_keys, "pos")
    if spec.drift_from is not None and spec.drift_amount_factor != 1.0:
        drifted = t0 >= F.lit(_epoch(spec.drift_from))
        log_amount = log_amount + F.when(drifted, math.log(spec.drift_amount_factor)).otherwise(0.0)
    amount = F.when(etype == "purchase", F.greatest(F.round(F.exp(log_amount), 2), F.lit(0.5)))
    event_s = t0 + F.col("pos") * 45 + F.floor(eu("gap") * 40)
    event_s = event_s.cast("long").alias("event_s")
    events = events.select("*", event_s, category.alias("product_category"))
    # Spark pushes the filter below the projection: let it need no hash for most events.
    inside = (t0 + F.col("pos") * 45 + 40 <= end_s) | (F.col("event_s") < end_s)
    return (
        events.where(inside)
        .select(
            "user_id",
            F.timestamp_seconds("event_s").alias("event_time"),
            "event_type",
            "session_id",
            amount.alias("amount"),
            "product_category",
        )
        .transform(_conform, EVENTS_SCHEMA)
    )
