"""Delta Lake's jars as a classpath from the local cache, resolved through Ivy only once.

``spark.jars.packages`` makes every session start run an Ivy resolution of Delta's 33
jars (1-3.5 s here, and a screen of Ivy output), even when all of them are cached. After
the first resolution the library remembers the jar paths Spark resolved (its
``spark.jars``) in a small file keyed by the package list, and later starts pass those
paths as ``spark.jars``: the same jars, no resolution. A listed jar that is gone (a
cleaned Ivy cache) makes the list stale: the next start resolves again.

``python -m sparkml_prod.core.jars [PACKAGE ...]`` prints the list comma-separated
(resolving first if needed), for ``spark-submit --jars``: Delta's jars, then those of the
Maven coordinates given (e.g. ``org.postgresql:postgresql:42.7.4`` for a JDBC sink, or
``org.apache.hadoop:hadoop-aws:3.5.0`` for ``s3a://``), or of ``$SPARKML_PROD_PACKAGES``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = [
    "delta_packages",
    "cached_jars",
    "remember_jars",
    "cache_file",
    "env_packages",
    "hadoop_version",
    "PACKAGES_ENV",
]

# More Maven coordinates every local session resolves next to Delta's (comma-separated).
PACKAGES_ENV = "SPARKML_PROD_PACKAGES"


def env_packages() -> list[str]:
    """The Maven coordinates of ``$SPARKML_PROD_PACKAGES`` (comma-separated), in order."""
    return [p.strip() for p in os.environ.get(PACKAGES_ENV, "").split(",") if p.strip()]


def hadoop_version() -> str:
    """The Hadoop line pyspark bundles (its ``hadoop-client-api`` jar), e.g. ``3.5.0``:
    the version ``hadoop-aws`` and other Hadoop artifacts must match."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in sorted(jars.glob("hadoop-client-api-*.jar")):
        return jar.name[len("hadoop-client-api-") : -len(".jar")]
    raise RuntimeError(f"No hadoop-client-api jar under {jars}: is pyspark installed whole?")


def delta_packages(extra_packages: Sequence[str] | None = None) -> list[str]:
    """The Maven coordinates of Delta for the installed pyspark and delta-spark, then
    ``extra_packages``: what ``delta.configure_spark_with_delta_pip`` would request."""
    spark_line = ".".join(metadata.version("pyspark").split(".")[:2])
    delta = f"io.delta:delta-spark_{spark_line}_2.13:{metadata.version('delta-spark')}"
    return [delta, *(extra_packages or [])]


def cache_file(packages: Sequence[str]) -> Path:
    """Where the jar list of ``packages`` is kept (``$SPARKML_PROD_CACHE`` or
    ``~/.cache/sparkml-prod``)."""
    root = os.environ.get("SPARKML_PROD_CACHE") or Path.home() / ".cache" / "sparkml-prod"
    key = hashlib.sha256(",".join(packages).encode()).hexdigest()[:16]
    return Path(root) / f"jars-{key}.txt"


def cached_jars(packages: Sequence[str]) -> list[str] | None:
    """The remembered local jar paths of ``packages``, or None when there is no list or a
    listed jar no longer exists."""
    try:
        listed = [line for line in cache_file(packages).read_text().splitlines() if line]
    except OSError:
        return None
    if not listed or not all(os.path.isfile(path) for path in listed):
        return None
    return listed


def remember_jars(packages: Sequence[str], spark_jars: str) -> None:
    """Keep the jars Spark resolved for ``packages`` (its ``spark.jars``: comma-separated
    ``file:`` URIs). Best effort: an unwritable cache only means resolving again."""
    paths = [unquote(urlparse(uri).path) for uri in spark_jars.split(",") if uri]
    if not paths or not all(os.path.isfile(path) for path in paths):
        return
    target = cache_file(packages)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text("\n".join(paths) + "\n")
        partial.replace(target)  # atomic: a concurrent start reads the old or the new list
    except OSError:
        return


if __name__ == "__main__":
    import sys

    extra = sys.argv[1:] or env_packages()
    wanted = delta_packages(extra)
    jars = cached_jars(wanted)
    if jars is None:
        from sparkml_prod.core.session import get_spark

        get_spark("sparkml-prod-jars", ui=False, extra_packages=extra).stop()
        jars = cached_jars(wanted)
    if jars is None:
        raise SystemExit(f"Could not resolve {', '.join(wanted)} into a local classpath.")
    print(",".join(jars))
