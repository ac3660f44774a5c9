"""spark-submit entry point of monitoring.

``spark-submit ... jobs/monitor.py --config conf/monitor.yaml --as-of 2024-07-01`` (or
``jobs/monitor.py report --config conf/monitor.yaml`` for the dashboard).

Thin: everything it does is :func:`sparkml_prod.runs.monitor.run_monitoring`.
"""

from __future__ import annotations

import sys

from sparkml_prod.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
