"""spark-submit entry point of training: ``spark-submit jobs/train.py --config conf/train.yaml``.

Thin: everything it does is :func:`sparkml_prod.runs.train.run_training`.
"""

from __future__ import annotations

import sys

from sparkml_prod.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
