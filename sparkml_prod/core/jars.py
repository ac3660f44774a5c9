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
``s3a``, short for :func:`s3a_packages`, for ``s3a://``), or of ``$SPARKML_PROD_PACKAGES``.

An entry ``!group:artifact`` in a package list excludes that module from the resolution
(Spark's ``spark.jars.excludes``). :func:`s3a_packages` uses it to replace the AWS SDK
``bundle`` that ``hadoop-aws`` depends on (686 MB) by the three SDK modules S3A needs
(about 10 MB with their dependencies).
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
    "s3a_packages",
    "split_excludes",
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


# The AWS SDK version each hadoop-aws release was built and tested with (its POM).
_AWS_SDK_OF_HADOOP = {"3.5.0": "2.35.4"}
# The SDK modules S3A calls: the S3 client, the transfer manager (uploads, copies) and
# STS (assumed-role and session credentials).
_S3A_SDK_MODULES = ("s3", "s3-transfer-manager", "sts")


def s3a_packages(hadoop: str | None = None) -> list[str]:
    """The Maven entries for ``s3a://`` on Hadoop line ``hadoop`` (default: pyspark's).

    ``hadoop-aws`` of that line and the SDK modules S3A uses, at the SDK version
    ``hadoop-aws`` was released with, with the 686 MB SDK ``bundle`` excluded.

    Examples
    --------
    >>> s3a_packages("3.5.0")  # doctest: +NORMALIZE_WHITESPACE
    ['org.apache.hadoop:hadoop-aws:3.5.0', 'software.amazon.awssdk:s3:2.35.4',
     'software.amazon.awssdk:s3-transfer-manager:2.35.4', 'software.amazon.awssdk:sts:2.35.4',
     '!software.amazon.awssdk:bundle']
    """
    line = hadoop or hadoop_version()
    sdk = _AWS_SDK_OF_HADOOP.get(line)
    if sdk is None:
        known = ", ".join(sorted(_AWS_SDK_OF_HADOOP))
        raise ValueError(
            f"No known AWS SDK version for hadoop-aws {line} (known: {known}). Use "
            f"org.apache.hadoop:hadoop-aws:{line} alone (it brings the SDK bundle)."
        )
    modules = [f"software.amazon.awssdk:{m}:{sdk}" for m in _S3A_SDK_MODULES]
    return [f"org.apache.hadoop:hadoop-aws:{line}", *modules, "!software.amazon.awssdk:bundle"]


def split_excludes(packages: Sequence[str]) -> tuple[list[str], list[str]]:
    """(coordinates to resolve, ``group:artifact`` modules to exclude) of a package list.

    Examples
    --------
    >>> split_excludes(["a:b:1", "!c:d"])
    (['a:b:1'], ['c:d'])
    """
    wanted = [p for p in packages if not p.startswith("!")]
    return wanted, [p[1:] for p in packages if p.startswith("!")]


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

    # "s3a" stands for s3a_packages(): hadoop-aws of pyspark's Hadoop line, lean SDK.
    extra = [e for a in sys.argv[1:] for e in (s3a_packages() if a == "s3a" else [a])]
    extra = extra or env_packages()
    wanted = delta_packages(extra)
    jars = cached_jars(wanted)
    if jars is None:
        from sparkml_prod.core.session import get_spark

        get_spark("sparkml-prod-jars", ui=False, extra_packages=extra).stop()
        jars = cached_jars(wanted)
    if jars is None:
        raise SystemExit(f"Could not resolve {', '.join(wanted)} into a local classpath.")
    print(",".join(jars))
