"""The one SparkSession factory of the library.

Locally (a plain ``python`` process) :func:`get_spark` builds a ``local[*]`` session with
Delta Lake's SQL extension, catalog and jars (from the classpath remembered by
:mod:`sparkml_prod.core.jars`, resolved through Ivy only the first time), a UTC session
time zone and quiet logs.
Inside ``spark-submit`` (or any process whose JVM was started for it) it keeps the
master and conf it was given and only fills in the settings the library cannot work
without, when they are absent.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

__all__ = ["get_spark", "LOCAL_DEFAULTS", "REQUIRED_DEFAULTS", "running_under_spark_submit"]

# Settings without which Delta tables and time-based features do not work: applied
# locally, and under spark-submit only where the submitter did not set them.
REQUIRED_DEFAULTS: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
}

# Local-mode defaults sized for one machine: few shuffle partitions (AQE coalesces
# further), a driver heap large enough for 20M-event feature builds.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": os.environ.get("SPARKML_PROD_DRIVER_MEMORY", "6g"),
    "spark.sql.adaptive.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
}

_LOG4J2 = Path(__file__).resolve().parents[2] / "conf" / "log4j2.properties"


def running_under_spark_submit() -> bool:
    """True when this Python process was started by ``spark-submit`` (its JVM exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _java_options() -> str:
    options = ["-Duser.timezone=UTC"]
    if _LOG4J2.is_file():
        options.append(f"-Dlog4j2.configurationFile=file:{_LOG4J2}")
    return " ".join(options)


def get_spark(
    app_name: str = "sparkml-prod",
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    ui: bool = True,
    extra_packages: list[str] | None = None,
) -> SparkSession:
    """Return the active SparkSession, creating it if needed.

    Parameters
    ----------
    app_name : str
        Application name shown by the cluster manager.
    master : str, optional
        Local mode only: the master URL. Defaults to ``$SPARKML_PROD_MASTER`` or
        ``local[*]``. Ignored under ``spark-submit``, which owns the master.
    conf : mapping, optional
        Extra Spark settings for a local session (they win over the defaults). Under
        ``spark-submit`` they are applied only where the submitter left them unset.
    ui : bool
        Whether to start the Spark UI (tests turn it off).
    extra_packages : list of str, optional
        More Maven coordinates to resolve next to Delta's jars (local mode), after those
        of ``$SPARKML_PROD_PACKAGES`` (comma-separated), e.g. the JDBC driver of a sink;
        an entry ``!group:artifact`` excludes that module (see
        :func:`sparkml_prod.core.jars.s3a_packages`).

    Examples
    --------
    >>> from sparkml_prod.core.session import get_spark
    >>> spark = get_spark(ui=False)
    >>> spark.conf.get("spark.sql.session.timeZone")
    'UTC'
    """
    # Executors must start the interpreter that has this project's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    if running_under_spark_submit():
        # Connect to spark-submit's JVM first: only then does SparkConf see what was given.
        SparkContext._ensure_initialized()
        given = SparkConf()
        builder = SparkSession.builder.appName(given.get("spark.app.name", app_name))
        for key, value in {**REQUIRED_DEFAULTS, **(conf or {})}.items():
            if not given.contains(key):
                builder = builder.config(key, value)
        return builder.getOrCreate()

    settings = {
        **REQUIRED_DEFAULTS,
        **LOCAL_DEFAULTS,
        "spark.ui.enabled": str(ui).lower(),
        "spark.driver.extraJavaOptions": _java_options(),
        "spark.executor.extraJavaOptions": _java_options(),
        **(conf or {}),
    }
    builder = SparkSession.builder.master(
        master or os.environ.get("SPARKML_PROD_MASTER", "local[*]")
    ).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    # Delta's jars: from the remembered local classpath, or resolved once through Ivy
    # (always when the caller asks for packages of their own).
    from sparkml_prod.core.jars import (
        cached_jars,
        delta_packages,
        env_packages,
        remember_jars,
        split_excludes,
    )

    wanted_extra = list(dict.fromkeys([*env_packages(), *(extra_packages or [])]))
    packages = delta_packages(wanted_extra)
    given_packages = [p for p in settings.get("spark.jars.packages", "").split(",") if p]
    given_jars = [j for j in settings.get("spark.jars", "").split(",") if j]
    jars = None if given_packages else cached_jars(packages)
    if jars is not None:
        builder = builder.config("spark.jars", ",".join([*jars, *given_jars]))
    else:
        coordinates, excludes = split_excludes(packages)
        builder = builder.config("spark.jars.packages", ",".join([*coordinates, *given_packages]))
        given_excludes = [e for e in settings.get("spark.jars.excludes", "").split(",") if e]
        if excludes or given_excludes:
            builder = builder.config("spark.jars.excludes", ",".join([*excludes, *given_excludes]))
    spark = builder.getOrCreate()
    if jars is None and not given_packages:
        resolved = spark.sparkContext.getConf().get("spark.jars", "").split(",")
        remember_jars(packages, ",".join(j for j in resolved if j and j not in given_jars))
    spark.sparkContext.setLogLevel("WARN")
    return spark


if __name__ == "__main__":
    # `python -m sparkml_prod.core.session` resolves Delta's jars into the Ivy cache once.
    session = get_spark(ui=False)
    session.range(1).write.format("delta").mode("overwrite").save(
        os.path.join(os.environ.get("TMPDIR", "/tmp"), "sparkml-prod-warmup")
    )
    print("Spark", session.version, "with Delta ready")
    session.stop()
