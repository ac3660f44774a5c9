"""Read and write Delta tables addressed by path or by catalog name.

A *table reference* is one string, so it fits in a YAML config or a model Param:

- a path (``/data/events``, ``demo-output/events``, ``s3a://bucket/events``,
  ``hdfs:///warehouse/events``), or ``delta.`<path>``` as Spark SQL writes it;
- anything else is a catalog name (``events``, ``analytics.events``) or a temp view.

:func:`table_expression` turns a reference into what :meth:`SparkSession.table`
resolves, :func:`overwrite_partition` replaces exactly one partition in one Delta
commit (re-running a job for the same date leaves no duplicates and never a
half-written table; concurrent writers of other partitions are retried, see there), and
:func:`require_columns` checks columns and types before a long
job starts.

``read_table(..., version=v)`` reads a Delta table as it was at version ``v`` (time travel),
so a training matrix can be rebuilt exactly after new events were appended. Before any
Spark job it checks, from the table's ``_delta_log`` alone, that the log still has ``v``
(:func:`table_versions`) and that no file of ``v`` was deleted by ``VACUUM`` since.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from sparkml_prod.core.errors import (
    ConcurrentWriteError,
    SchemaError,
    SourceVersionError,
    TableNotFoundError,
)
from sparkml_prod.core.time import to_utc
from sparkml_prod.core.write_barrier import behind_write_barrier

__all__ = [
    "is_path",
    "table_path",
    "table_expression",
    "table_exists",
    "read_table",
    "write_table",
    "overwrite_partition",
    "require_columns",
    "schema_of",
    "delta_version",
    "table_versions",
    "NUMERIC",
    "sql_literal",
    "WRITE_ATTEMPTS",
]

log = logging.getLogger("sparkml_prod.core.tables")

# Accepted type names for a column that only has to be numeric.
NUMERIC: tuple[str, ...] = ("tinyint", "smallint", "int", "bigint", "float", "double", "decimal")


def is_path(ref: str) -> bool:
    """True when ``ref`` addresses a table by path rather than by catalog name."""
    return ref.startswith("delta.`") or "/" in ref or "://" in ref or ref.startswith(".")


def table_path(ref: str) -> str:
    """The storage path of a path reference (``delta.`/p``` or ``/p``), local ones absolute."""
    if ref.startswith("delta.`") and ref.endswith("`"):
        ref = ref[len("delta.`") : -1]
    if "://" in ref or ref.startswith("file:"):
        return ref
    return os.path.abspath(ref)


def table_expression(ref: str) -> str:
    """What :meth:`SparkSession.table` resolves: ``delta.`/abs/path``` or the catalog name."""
    return f"delta.`{table_path(ref)}`" if is_path(ref) else ref


def table_exists(spark: SparkSession, ref: str) -> bool:
    """Whether the Delta table (by path) or catalog table / view (by name) exists."""
    if is_path(ref):
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(spark, table_path(ref)))
    return bool(spark.catalog.tableExists(ref))


def read_table(
    spark: SparkSession,
    ref: str,
    required: Mapping[str, str | Sequence[str]] | None = None,
    version: int | None = None,
) -> DataFrame:
    """Read a table by reference, checking it exists and has the ``required`` columns.

    With ``version``, the Delta table is read as it was at that version (time travel) and
    ``required`` is checked against that version's schema. Only the table's log and the
    existence of files are read before the DataFrame is returned: no Spark job runs.

    Raises
    ------
    TableNotFoundError
        No table (or view) with that reference.
    SourceVersionError
        ``version`` is not in the table's log (see :func:`table_versions`), a file of
        that version was deleted by ``VACUUM``, or the table is not a Delta table.
    SchemaError
        A required column is missing or has another type.

    Examples
    --------
    >>> events = read_table(spark, "demo-output/tables/events",  # doctest: +SKIP
    ...                     required={"user_id": "bigint", "event_time": "timestamp"})
    >>> as_trained = read_table(spark, "demo-output/tables/events", version=3)  # doctest: +SKIP
    """
    if not table_exists(spark, ref):
        kind = "Delta table at path" if is_path(ref) else "table"
        raise TableNotFoundError(
            f"Table '{ref}' not found: no {kind} '{table_path(ref) if is_path(ref) else ref}'. "
            "Check the reference in the config, or create the table first."
        )
    if version is None:
        df = spark.table(table_expression(ref))
    else:
        df = _read_version(spark, ref, version)
    if required:
        require_columns(df, required, table=ref)
    return df


def schema_of(df: DataFrame) -> dict[str, str]:
    """Column name -> Spark SQL type name (``bigint``, ``decimal(10,2)``), in order."""
    return {field.name: field.dataType.simpleString() for field in df.schema.fields}


def require_columns(
    df: DataFrame, required: Mapping[str, str | Sequence[str]], table: str
) -> DataFrame:
    """Check that ``df`` has each required column with an accepted type.

    ``required`` maps a column name to a Spark SQL type name (``"bigint"``,
    ``"timestamp"``, ``"string"``), or to a sequence of accepted names (``NUMERIC``);
    ``decimal`` accepts any precision, and an empty sequence any type. Only the schema
    is read: no Spark job runs.

    Raises
    ------
    SchemaError
        Naming the table, the missing or mistyped column, and the columns present.
    """
    present = schema_of(df)
    listing = ", ".join(f"{name} {kind}" for name, kind in present.items())
    missing = [name for name in required if name not in present]
    if missing:
        raise SchemaError(
            f"Table '{table}' is missing required column(s) {', '.join(missing)}. "
            f"Columns present: {listing}."
        )
    for name, accepted in required.items():
        options = (accepted,) if isinstance(accepted, str) else tuple(accepted)
        found = present[name]
        if options and not any(found == o or found.startswith(f"{o}(") for o in options):
            raise SchemaError(
                f"Table '{table}' column '{name}' has type {found}; expected "
                f"{' or '.join(options)}. Columns present: {listing}."
            )
    return df


def write_table(
    df: DataFrame,
    ref: str,
    mode: str = "errorifexists",
    partition_by: Iterable[str] = (),
    options: Mapping[str, str] | None = None,
) -> None:
    """Write ``df`` as a Delta table at a path or under a catalog name."""
    writer = df.write.format("delta").mode(mode).options(**(options or {}))
    partition_columns = list(partition_by)
    if partition_columns:
        writer = writer.partitionBy(*partition_columns)
    if is_path(ref):
        writer.save(table_path(ref))
    else:
        writer.saveAsTable(ref)


def sql_literal(value: object) -> str:
    """A Spark SQL literal for a partition value (strings quoted, dates typed).

    A datetime is written as its UTC instant with an explicit ``+00:00`` (a naive one is
    read as UTC), so neither ``TZ`` nor the session time zone can move it; a date is a
    ``DATE`` literal, which has no zone.

    Examples
    --------
    >>> sql_literal(dt.datetime(2024, 6, 1))
    "TIMESTAMP'2024-06-01 00:00:00+00:00'"
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP'{to_utc(value).isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


# Attempts of one partition replace that lose to concurrent writers before it gives up.
WRITE_ATTEMPTS = 4
# Seconds before the n-th retry: n times this.
RETRY_BACKOFF_S = 0.5


def overwrite_partition(
    df: DataFrame,
    ref: str,
    partition: Mapping[str, object],
    options: Mapping[str, str] | None = None,
) -> None:
    """Replace exactly the rows of one partition, atomically, in one Delta commit.

    ``partition`` maps the partition columns to their values, e.g. ``{"as_of":
    date(2024, 6, 1)}``. Rows of other partitions are untouched; a rerun with the same
    values leaves only the new rows. If the table does not exist yet it is created,
    partitioned by those columns. Delta refuses the write (and leaves the table as it
    was) if ``df`` holds a row outside the partition. ``options`` are more Delta write
    options (e.g. ``mergeSchema``).

    Concurrent writers (other jobs writing other partitions of the same table, on a
    file system whose Delta log store is safe for them: HDFS, not local disk): every
    write, the one that creates the table too, is a ``replaceWhere`` of its partition,
    so it can never remove another writer's rows. Delta commits writes of disjoint
    partitions one after the other by itself; where it refuses a commit (two writers
    created the table at once, a concurrent write changed the schema or touched the same
    partition) nothing was committed, and the write is tried again from a fresh snapshot,
    up to ``WRITE_ATTEMPTS`` times in all. ``df`` is computed again at each attempt:
    persist it first.

    Raises
    ------
    ConcurrentWriteError
        Every attempt lost to a concurrent writer; the table holds none of ``df``.
    """
    import delta.exceptions  # noqa: F401  (installs the conversion of Delta's conflicts)
    from delta.exceptions.base import (
        ConcurrentAppendException,
        ConcurrentDeleteDeleteException,
        ConcurrentDeleteReadException,
        ConcurrentTransactionException,
        ConcurrentWriteException,
        DeltaConcurrentModificationException,
        MetadataChangedException,
        ProtocolChangedException,
    )

    conflicts = (
        ConcurrentAppendException,
        ConcurrentDeleteDeleteException,
        ConcurrentDeleteReadException,
        ConcurrentTransactionException,
        ConcurrentWriteException,
        DeltaConcurrentModificationException,
        MetadataChangedException,
        ProtocolChangedException,
    )
    predicate = " AND ".join(f"`{col}` = {sql_literal(v)}" for col, v in partition.items())
    settings = {**(options or {}), "replaceWhere": predicate}
    data = behind_write_barrier(df)
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        # Partitioning is only given to create the table: Delta refuses a partitioning
        # that differs from an existing table's, and reads it from the table otherwise.
        columns = [] if table_exists(df.sparkSession, ref) else list(partition)
        try:
            write_table(data, ref, mode="overwrite", partition_by=columns, options=settings)
            return
        except conflicts as error:
            reason = f"{type(error).__name__}: {_first_line(error)}"
            if attempt == WRITE_ATTEMPTS:
                raise ConcurrentWriteError(
                    f"Table '{ref}': replacing partition {predicate} conflicted with "
                    f"concurrent writes to the table {WRITE_ATTEMPTS} times (last: "
                    f"{reason}). Nothing of this write was committed and the table's other "
                    "partitions are as the other writers left them. Rerun the job: the "
                    "write replaces its partition, so a rerun leaves exactly one copy."
                ) from error
            log.warning(
                "Table '%s': replacing partition %s conflicted with a concurrent write "
                "(attempt %d of %d, %s); retrying from the table's new snapshot",
                ref,
                predicate,
                attempt,
                WRITE_ATTEMPTS,
                reason,
            )
            time.sleep(RETRY_BACKOFF_S * attempt)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def delta_version(spark: SparkSession, ref: str) -> int:
    """The current version of a Delta table, for exact rebuilds by time travel."""
    from delta.tables import DeltaTable

    table = (
        DeltaTable.forPath(spark, table_path(ref))
        if is_path(ref)
        else DeltaTable.forName(spark, ref)
    )
    latest = table.history(1).select("version").head()
    assert latest is not None, f"Delta table '{ref}' has no history"
    return int(latest[0])


# -- time travel ----------------------------------------------------------------------
#
# Everything below reads the Delta log through Hadoop's FileSystem in the driver, as the
# Delta protocol (PROTOCOL.md) lays it out, and never starts a Spark job: Delta's own
# APIs for the same facts do (``DeltaTable.history()`` one job, ``DataFrame.inputFiles()``
# four jobs of log replay, measured with Delta 4.4). Delta itself refuses a version that
# is not in the log at analysis but without naming the table, and a vacuumed version only
# once the first job reads a missing file (``FAILED_READ_FILE.FILE_NOT_EXIST``).

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\.parquet$")
_CHECKPOINT_PART = re.compile(r"^(\d{20})\.checkpoint\.(\d{10})\.(\d{10})\.parquet$")
_CHECKPOINT_V2 = re.compile(r"^(\d{20})\.checkpoint\.[0-9a-fA-F-]{36}\.(?:json|parquet)$")
# The Z85 alphabet, in which a deletion vector descriptor encodes its file's UUID.
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _jvm(spark: SparkSession) -> Any:
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "time travel needs a classic (non-Connect) SparkSession"
    return jvm


def _file_system(spark: SparkSession, location: str) -> tuple[Any, Any]:
    """The table root as a Hadoop ``Path`` and its ``FileSystem`` (session conf applied)."""
    root = _jvm(spark).org.apache.hadoop.fs.Path(location)
    conf = spark._jsparkSession.sessionState().newHadoopConf()
    return root, root.getFileSystem(conf)


def _delta_location(spark: SparkSession, ref: str) -> str | None:
    """Where an existing table's files are, or None when it is not a Delta table."""
    if is_path(ref):
        return table_path(ref)
    try:
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {ref}").collect()  # a command: no job
    except AnalysisException:
        return None
    # Table details follow the column rows (a column may be called "Location" too).
    names = [row[0] for row in rows]
    marker = "# Detailed Table Information"
    info = {str(r[0]): str(r[1]) for r in rows[names.index(marker) :]} if marker in names else {}
    return info.get("Location") if info.get("Provider", "").lower() == "delta" else None


def _log_versions(names: Iterable[str]) -> tuple[int, int] | None:
    """Earliest and latest readable version from the file names of a ``_delta_log``.

    The latest is the last commit. The earliest is 0 while the commit of version 0 is
    still there, else the first complete checkpoint from which every later commit is
    present: log cleanup removes the commits before a checkpoint.
    """
    commits, checkpoints, parts = set(), set(), dict[tuple[int, int], set[int]]()
    for name in names:
        if m := _COMMIT.match(name):
            commits.add(int(m[1]))
        elif m := _CHECKPOINT.match(name) or _CHECKPOINT_V2.match(name):
            checkpoints.add(int(m[1]))
        elif m := _CHECKPOINT_PART.match(name):
            parts.setdefault((int(m[1]), int(m[3])), set()).add(int(m[2]))
    checkpoints |= {v for (v, of), seen in parts.items() if seen == set(range(1, of + 1))}
    if not commits:
        return None
    latest = max(commits)
    contiguous = latest  # every commit from here to the latest is in the log
    while contiguous - 1 in commits:
        contiguous -= 1
    starts = {c for c in checkpoints if contiguous - 1 <= c <= latest}
    if contiguous == 0:
        starts.add(0)
    return (min(starts), latest) if starts else None


def table_versions(spark: SparkSession, ref: str) -> tuple[int, int]:
    """The earliest and the latest version of a Delta table that time travel can read.

    Read from a listing of the table's ``_delta_log``, without a Spark job. Versions
    older than ``delta.logRetentionDuration`` (30 days by default) leave the log at the
    next checkpoint. A version in this range can still be unreadable when ``VACUUM``
    deleted its files: :func:`read_table` checks that too.

    Raises
    ------
    TableNotFoundError
        No table with that reference.
    SourceVersionError
        The table is not a Delta table (a view, a Parquet table).

    Examples
    --------
    >>> table_versions(spark, "demo-output/tables/events")  # doctest: +SKIP
    (0, 12)
    """
    if not table_exists(spark, ref):
        raise TableNotFoundError(
            f"Table '{ref}' not found. Check the reference in the config, or create the "
            "table first."
        )
    location = _delta_location(spark, ref)
    if location is None:
        raise SourceVersionError(
            f"Table '{ref}' is not a Delta table, so it has no versions: only Delta tables "
            "(by path or by catalog name) keep them. Point the reference at a Delta table."
        )
    return _available_versions(spark, ref, location)


def _available_versions(spark: SparkSession, ref: str, location: str) -> tuple[int, int]:
    root, fs = _file_system(spark, location)
    log = _jvm(spark).org.apache.hadoop.fs.Path(root, "_delta_log")
    available = _log_versions(status.getPath().getName() for status in fs.listStatus(log))
    if available is None:
        raise SourceVersionError(
            f"Table '{ref}' has no readable version: its Delta log at '{location}/_delta_log' "
            "has no commit from which the table can be rebuilt."
        )
    return available


def _read_version(spark: SparkSession, ref: str, version: int) -> DataFrame:
    """``ref`` at ``version``, after checking the log has it and its files exist."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(
            f"The version to read table '{ref}' at must be a Delta version >= 0 (or None "
            f"for the current version). Got {version!r} instead."
        )
    location = _delta_location(spark, ref)
    if location is None:
        raise SourceVersionError(
            f"Table '{ref}' is not a Delta table, so it cannot be read at version {version}: "
            "only Delta tables (by path or by catalog name) keep versions. Point the "
            "reference at a Delta table, or leave the version unset to read it as it is."
        )
    earliest, latest = _available_versions(spark, ref, location)
    if version > latest:
        raise SourceVersionError(
            f"Table '{ref}' has no version {version}: the versions available are "
            f"{earliest}..{latest}, and {latest} is the current one. Check that the "
            "reference points at the table the version was recorded from (a table that was "
            "dropped and created again starts again at version 0)."
        )
    if version < earliest:
        raise SourceVersionError(
            f"Table '{ref}' no longer has version {version} in its log: the versions "
            f"available are {earliest}..{latest}. Delta cleans up versions older than "
            "delta.logRetentionDuration (30 days by default), so version "
            f"{version} cannot be read exactly any more. To keep versions for rebuilds, "
            "set the table properties delta.logRetentionDuration and "
            "delta.deletedFileRetentionDuration to a longer interval."
        )
    missing = _first_vacuumed_file(spark, location, version, latest)
    if missing is not None:
        kind, name = missing
        raise SourceVersionError(
            f"Table '{ref}' version {version} can no longer be read exactly: its {kind} "
            f"'{name}' was removed from the table after version {version} and has since "
            f"been deleted (vacuumed). The log still has versions {earliest}..{latest}, but "
            "VACUUM deletes the files of replaced versions once they are older than its "
            "retention. To keep versions readable for rebuilds, set the table property "
            "delta.deletedFileRetentionDuration to a longer interval and never VACUUM "
            "with a shorter retention."
        )
    try:
        reader = spark.read.format("delta").option("versionAsOf", version)
        return reader.load(location) if is_path(ref) else reader.table(ref)
    except AnalysisException as exc:  # e.g. the log was cleaned up since the check
        first_line = str(exc).strip().splitlines()[0]
        raise SourceVersionError(
            f"Table '{ref}' cannot be read at version {version}: {first_line}"
        ) from exc


def _first_vacuumed_file(
    spark: SparkSession, location: str, version: int, latest: int
) -> tuple[str, str] | None:
    """A file of ``version`` that no longer exists, as (kind, path in the table), or None.

    VACUUM only deletes files that are no longer part of the table, so only the files
    that commits after ``version`` removed can be missing: a table that was only
    appended to needs no check at all. A path is one of ``version``'s files when the
    first later commit that names it removes it (a commit that only adds it added a new
    file). Each such file (and its deletion vector file) is checked for existence, one
    metadata call each, stopping at the first missing one.
    """
    jvm = _jvm(spark)
    root, fs = _file_system(spark, location)
    seen: set[str] = set()
    for commit in range(version + 1, latest + 1):
        commit_file = jvm.org.apache.hadoop.fs.Path(root, f"_delta_log/{commit:020d}.json")
        stream = fs.open(commit_file)
        try:
            text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()
        actions = [json.loads(line) for line in text.splitlines() if line.strip()]
        for action in (a["remove"] for a in actions if "remove" in a):
            if action["path"] in seen:
                continue
            seen.add(action["path"])
            for kind, path in _files_of(action):
                uri = jvm.java.net.URI(path)
                relative = jvm.org.apache.hadoop.fs.Path(uri)
                absolute = (
                    relative
                    if relative.isAbsolute()
                    else jvm.org.apache.hadoop.fs.Path(root, relative)
                )
                if not fs.exists(absolute):
                    return kind, unquote(path)
        seen.update(a["add"]["path"] for a in actions if "add" in a)
    return None


def _files_of(remove: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The data file of a ``remove`` action and its deletion vector file, if stored apart."""
    files = [("data file", str(remove["path"]))]
    dv = remove.get("deletionVector") or {}
    if dv.get("storageType") == "u":  # <random prefix><Z85 of the UUID>, under the root
        encoded = str(dv["pathOrInlineDv"])
        prefix, name = encoded[:-20], f"deletion_vector_{_z85_uuid(encoded[-20:])}.bin"
        files.append(("deletion vector file", f"{prefix}/{name}" if prefix else name))
    elif dv.get("storageType") == "p":  # an absolute path
        files.append(("deletion vector file", str(dv["pathOrInlineDv"])))
    return files


def _z85_uuid(text: str) -> str:
    """The UUID that 20 Z85 characters encode (each 5 characters are 4 bytes, big endian)."""
    data = b""
    for start in range(0, 20, 5):
        value = 0
        for char in text[start : start + 5]:
            value = value * 85 + _Z85.index(char)
        data += value.to_bytes(4, "big")
    return str(uuid.UUID(bytes=data))
