"""spark-submit entry point of batch scoring.

``spark-submit [--master ...] --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
--py-files dist/sparkml_prod.zip jobs/score.py --config conf/score.yaml --as-of 2024-06-01``

Thin: everything it does is :func:`sparkml_prod.runs.score.run_scoring`.
"""

from __future__ import annotations

import sys

from sparkml_prod.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
