"""Scores upserted into a PostgreSQL table: a staging table, then one transactional swap.

After the Delta write of a scoring run, :func:`upsert_scores` copies the run's rows
(``user_id, as_of, score, model_name, model_version, variant, holdout, scored_at,
run_id``) into the configured table:

1. Spark's JDBC writer fills a staging table ``<table>__staging_<yyyymmdd>`` (one per
   date; any leftover of a killed run of that date is dropped and created anew first);
2. in ONE transaction, through the driver in the session's JVM: create the target when
   absent, delete the date's rows from it, insert the staging rows, check the count,
   drop the staging table, commit.

Guarantees: a rerun of a date leaves exactly one row per user for it (the primary key
``(user_id, as_of)`` enforces it), other dates are untouched, and readers see the
previous rows of the date until the new ones commit: PostgreSQL's MVCC never shows the
half-done swap. A run killed at any step (during the staging write, before the commit)
leaves the target as it was; the next run of the date replaces the leftover staging table.

Instants: ``scored_at`` is staged as microseconds since the epoch and ``as_of`` as days
since it, and converted in SQL (``timestamptz``, ``date``), so neither the JVM's nor the
database session's time zone can move them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import JdbcSinkConfig
from sparkml_prod.core.errors import ConfigError, SinkError

__all__ = [
    "DRIVER_CLASS",
    "DRIVER_PACKAGE",
    "ScoresSink",
    "check_sink",
    "prepare_target",
    "upsert_scores",
]

DRIVER_CLASS = "org.postgresql.Driver"
#: The driver's Maven coordinates the project tests with.
DRIVER_PACKAGE = "org.postgresql:postgresql:42.7.8"
_STAGING_SUFFIX = "__staging_"  # + yyyymmdd
_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
_MAX_TABLE = _MAX_IDENTIFIER - len(_STAGING_SUFFIX) - 8
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Spark type of user_id -> the target column's type.
_ID_TYPES = {"bigint": "bigint", "int": "integer", "smallint": "smallint", "string": "text"}
# The scores table's columns (runs.score.OUTPUT_COLUMNS, which imports this module), in order.
COLUMNS = (
    "user_id",
    "as_of",
    "score",
    "model_name",
    "model_version",
    "variant",
    "holdout",
    "scored_at",
    "run_id",
)
_FIX = (
    "The table keeps its previous rows for that date and the Delta scores partition is "
    "written; fix the cause and rerun the date."
)


@dataclass(frozen=True)
class ScoresSink:
    """A checked ``jdbc_sink``: the password read, the table name split and folded."""

    config: JdbcSinkConfig
    password: str
    table: str  # schema.name or name, lower case

    def staging(self, as_of: dt.date) -> str:
        return f"{self.table}{_STAGING_SUFFIX}{as_of:%Y%m%d}"


def check_sink(config: JdbcSinkConfig, key: str = "jdbc_sink") -> ScoresSink:
    """Check every value of the section (no connection, no Spark job); a ConfigError names
    the key, what was expected and what was found."""
    if not config.url.startswith("jdbc:postgresql:"):
        raise ConfigError(
            f"{key}.url must be a PostgreSQL JDBC URL (jdbc:postgresql://host:port/database), "
            f"got {config.url!r}."
        )
    if re.search(r"[?&]password=", config.url):
        raise ConfigError(
            f"{key}.url must not carry the password: put it in the environment variable "
            f"named by {key}.password_env."
        )
    parts = config.table.split(".")
    if (
        len(parts) > 2
        or not all(_IDENTIFIER.fullmatch(p) and len(p) <= _MAX_IDENTIFIER for p in parts)
        or len(parts[-1]) > _MAX_TABLE
    ):
        raise ConfigError(
            f"{key}.table must be 'table' or 'schema.table', each a name of letters, digits "
            f"and underscores not starting with a digit, the table at most {_MAX_TABLE} "
            f"characters; got {config.table!r}."
        )
    if not config.user:
        raise ConfigError(f"{key}.user must be a database user name, got an empty string.")
    if not _IDENTIFIER.fullmatch(config.password_env):
        raise ConfigError(
            f"{key}.password_env must be the name of an environment variable holding the "
            f"password, got {config.password_env!r}."
        )
    password = os.environ.get(config.password_env)
    if not password:
        raise ConfigError(
            f"{key}.password_env names ${config.password_env}, which is not set (or empty): "
            f"export the database password of user '{config.user}' in it before the run."
        )
    for name in ("batch_size", "write_partitions"):
        value = getattr(config, name)
        if value < 1:
            raise ConfigError(f"{key}.{name} must be at least 1, got {value}.")
    return ScoresSink(config, password, config.table.lower())


def _connect(spark: SparkSession, sink: ScoresSink) -> Any:
    """A ``java.sql.Connection`` from the driver in the session's class loader (the one
    ``--jars`` and ``spark.jars`` fill; ``DriverManager`` would not see it from py4j)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    try:
        driver = jvm.org.apache.spark.util.Utils.classForName(DRIVER_CLASS, True, False)
    except Py4JJavaError as err:
        raise SinkError(
            f"PostgreSQL's JDBC driver ({DRIVER_CLASS}) is not on the Spark classpath, so "
            f"the scores cannot go to table '{sink.table}'. Submit with --jars "
            f'"$(python -m sparkml_prod.core.jars {DRIVER_PACKAGE})" (or --packages '
            f"{DRIVER_PACKAGE}), or set SPARKML_PROD_PACKAGES={DRIVER_PACKAGE} for a local "
            "session."
        ) from err
    props = jvm.java.util.Properties()
    props.setProperty("user", sink.config.user)
    props.setProperty("password", sink.password)
    try:
        connection = driver.newInstance().connect(sink.config.url, props)
    except Py4JJavaError as err:
        raise SinkError(
            f"Could not connect to {sink.config.url} as '{sink.config.user}' for table "
            f"'{sink.table}': {_cause(err)}. Check jdbc_sink.url, jdbc_sink.user and the "
            f"password in ${sink.config.password_env}."
        ) from err
    if connection is None:
        raise SinkError(f"{DRIVER_CLASS} does not accept the URL {sink.config.url!r}.")
    return connection


def _cause(err: Py4JJavaError) -> str:
    """The Java exception's message, without py4j's stack trace."""
    return str(err.java_exception.getMessage())


def _target_ddl(table: str, id_type: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (user_id {id_type} NOT NULL, as_of date NOT NULL, "
        "score double precision, model_name text, model_version integer, variant text, "
        "holdout boolean, scored_at timestamptz, run_id text, PRIMARY KEY (user_id, as_of))"
    )


def prepare_target(spark: SparkSession, sink: ScoresSink, user_id_type: str) -> None:
    """Before any long job: the driver loads, the database accepts the user, and the target
    exists (created with its primary key when absent) with every column of the scores.

    ``user_id_type`` is the Spark type of the scores' ``user_id`` (``bigint``, ``int``,
    ``string``).
    """
    id_type = _ID_TYPES.get(user_id_type)
    if id_type is None:
        raise SinkError(
            f"user_id of type {user_id_type} cannot be written to table '{sink.table}': "
            f"the JDBC sink takes {', '.join(_ID_TYPES)} ids."
        )
    connection = _connect(spark, sink)
    try:
        statement = connection.createStatement()
        statement.execute(_target_ddl(sink.table, id_type))
        schema, _, name = sink.table.rpartition(".")
        lookup = connection.prepareStatement(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = COALESCE(NULLIF(?, ''), current_schema()) "
            "ORDER BY ordinal_position"
        )
        lookup.setString(1, name)
        lookup.setString(2, schema)
        result = lookup.executeQuery()
        present = []
        while result.next():
            present.append(str(result.getString(1)))
        missing = [c for c in COLUMNS if c not in present]
        if missing:
            raise SinkError(
                f"Table '{sink.table}' at {sink.config.url} lacks column(s) "
                f"{', '.join(missing)} of the scores; it has {', '.join(present)}. Point "
                "jdbc_sink.table at a new table (it is created) or add the columns."
            )
    except Py4JJavaError as err:
        raise SinkError(
            f"Preparing table '{sink.table}' at {sink.config.url} failed: {_cause(err)}. "
            "Nothing was written."
        ) from err
    finally:
        connection.close()


def _write_staging(scores: DataFrame, sink: ScoresSink, staging: str) -> None:
    """Spark's JDBC writer into a fresh staging table (dropped and created here, so a
    killed run's leftover cannot mix in). Instants travel as numbers (module docs)."""
    rows = scores.select(
        F.col("user_id"),
        F.unix_date(F.col("as_of")).alias("as_of_days"),
        F.col("score"),
        F.col("model_name"),
        F.col("model_version"),
        F.col("variant"),
        F.col("holdout"),
        F.unix_micros(F.col("scored_at")).alias("scored_at_micros"),
        F.col("run_id"),
    )
    (
        rows.coalesce(sink.config.write_partitions)
        .write.format("jdbc")
        .option("url", sink.config.url)
        .option("dbtable", staging)
        .option("user", sink.config.user)
        .option("password", sink.password)
        .option("driver", DRIVER_CLASS)
        .option("batchsize", str(sink.config.batch_size))
        .mode("overwrite")  # drops a leftover staging table and creates it anew
        .save()
    )


def _swap_sql(
    sink: ScoresSink, staging: str, as_of: dt.date, run_id: str | None
) -> tuple[str, str]:
    day = f"DATE '{as_of.isoformat()}'"
    own = "" if run_id is None else " AND run_id = '" + run_id.replace("'", "''") + "'"
    delete = f"DELETE FROM {sink.table} WHERE as_of = {day}"
    insert = (
        f"INSERT INTO {sink.table} ({', '.join(COLUMNS)}) SELECT user_id, "
        "DATE '1970-01-01' + as_of_days, score, model_name, model_version, variant, holdout, "
        "TIMESTAMPTZ '1970-01-01 00:00:00+00' + scored_at_micros * INTERVAL '1 microsecond', "
        f"run_id FROM {staging} WHERE DATE '1970-01-01' + as_of_days = {day}{own}"
    )
    return delete, insert


def upsert_scores(
    spark: SparkSession,
    sink: ScoresSink,
    scores: DataFrame,
    as_of: dt.date,
    expected_rows: int,
    run_id: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> int:
    """Replace the rows of ``as_of`` in the sink's table by ``scores`` (their
    ``COLUMNS``, all of that date) in one transaction; returns the rows inserted.

    ``expected_rows`` is how many rows the Delta write counted: a staging table with
    another count (of ``run_id``'s rows, when given) is refused (rolled back) rather than
    committed, so a concurrent run of the same date cannot slip in. ``on_step`` is called
    with ``"staged"`` after the staging write and ``"swapped"`` after the delete and insert
    (inside the open transaction, before the commit): a place to observe or interrupt
    the run.
    """
    staging = sink.staging(as_of)
    try:
        _write_staging(scores, sink, staging)
    except Py4JJavaError as err:
        raise SinkError(
            f"Writing the scores of {as_of} into staging table '{staging}' for '{sink.table}' "
            f"failed: {_cause(err)}. {_FIX}"
        ) from err
    if on_step is not None:
        on_step("staged")
    delete, insert = _swap_sql(sink, staging, as_of, run_id)
    id_type = _ID_TYPES.get(dict(scores.dtypes)["user_id"], "text")
    connection = _connect(spark, sink)
    try:
        connection.setAutoCommit(False)
        statement = connection.createStatement()
        statement.execute(_target_ddl(sink.table, id_type))  # a no-op once it exists
        statement.executeUpdate(delete)
        inserted = int(statement.executeUpdate(insert))
        if inserted != expected_rows:
            _rollback(connection)
            raise SinkError(
                f"Staging table '{staging}' holds {inserted} rows of {as_of}"
                f"{'' if run_id is None else f' from run {run_id}'}, but the run "
                f"wrote {expected_rows} to Delta, so table '{sink.table}' was not changed. "
                "Another run of the same date may have written at the same time: rerun the "
                "date."
            )
        statement.execute(f"DROP TABLE {staging}")
        if on_step is not None:
            on_step("swapped")
        connection.commit()
        return inserted
    except Py4JJavaError as err:
        _rollback(connection)
        raise SinkError(
            f"Replacing the rows of {as_of} in table '{sink.table}' from '{staging}' failed "
            f"and was rolled back: {_cause(err)}. {_FIX}"
        ) from err
    except BaseException:
        _rollback(connection)
        raise
    finally:
        with contextlib.suppress(Py4JJavaError):
            connection.close()


def _rollback(connection: Any) -> None:
    """Roll back; a lost connection has rolled back on the server already."""
    with contextlib.suppress(Py4JJavaError):
        connection.rollback()
