"""spark-submit entry point of retraining:
``spark-submit jobs/retrain.py --config conf/train.yaml --as-of 2024-07-01``.

Thin: everything it does is :func:`sparkml_prod.runs.retrain.run_retraining`.
"""

from __future__ import annotations

import sys

from sparkml_prod.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
