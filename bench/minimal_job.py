"""The smallest Delta job, submitted with the scoring job's flags: the fixed cost of any
``spark-submit`` of this library (JVM, Ivy resolution of ``--packages``, the Python
driver, a Delta session) that ``bench/scoring.py`` compares the scoring job with.

``spark-submit ... bench/minimal_job.py <delta table>``: a session from
:func:`sparkml_prod.core.session.get_spark`, one read of a small Delta table, a count.
"""

from __future__ import annotations

import sys

from sparkml_prod.core.session import get_spark

if __name__ == "__main__":
    spark = get_spark("bench-minimal")
    rows = spark.read.format("delta").load(sys.argv[1]).count()
    print(f"{rows} rows")
