"""The Maven packages the test session resolves next to Delta's (once; then cached).

Storage tests reach their servers through the one session-scoped SparkSession, so the
connectors they need (the S3A file system, JDBC drivers) are on its classpath from the
start. HDFS needs nothing here: its client is in pyspark's ``hadoop-client-runtime``.
S3A comes as ``hadoop-aws`` of pyspark's Hadoop line with the three AWS SDK modules it
uses instead of the 686 MB SDK bundle (:func:`sparkml_prod.core.jars.s3a_packages`).
"""

from __future__ import annotations

from sparkml_prod.core.jars import s3a_packages

#: PostgreSQL's JDBC driver (class ``org.postgresql.Driver``): the JDBC sink and ingest tests.
POSTGRES_JDBC = "org.postgresql:postgresql:42.7.8"

TEST_PACKAGES: list[str] = [*s3a_packages(), POSTGRES_JDBC]
