"""The library's time-sensitive paths, run in this process's OS time zone (``TZ``).

``tests/test_time_zones.py`` starts this script in a new process (a new JVM and a new
pyspark) started in the first zone's ``TZ``, with plain ``datetime.date`` as-of dates as a
job would give:

    python tests/time_zone_probe.py INPUTS.json OUT_DIR ZONE [ZONE ...]

Each further zone is set with ``time.tzset()`` in the same process, which is what
Python's conversions of naive datetimes read: one JVM start serves every zone.
``INPUTS.json`` names the events table, the users table, the model registry and a CSV
file of events to ingest. The results of each zone go to ``OUT_DIR/<zone with '/' as '-'>``
as Delta tables (``matrix``: spine, window features and labels; ``scores`` and
``scores_users``: two scoring runs; ``ingested``: the CSV's events of date A) and
``python.json`` (Python-side values, the zone's offset, the scoring
run's start and end in epoch microseconds). Timestamps stay
Delta timestamps: the test renders them in its own UTC session, so nothing here formats
an instant in the OS zone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession

from sparkml_prod.core.config import IngestConfig, ScoreConfig, ScoringSpineConfig, from_mapping
from sparkml_prod.core.session import get_spark
from sparkml_prod.data.ingest import run_ingest
from sparkml_prod.data.labels import add_labels, labels_complete_until
from sparkml_prod.data.spine import active_entity_spine, as_of_schedule
from sparkml_prod.features import WindowAggregates
from sparkml_prod.runs.score import run_scoring

A, B = dt.date(2024, 3, 10), dt.date(2024, 3, 17)  # New York moves its clocks on the 10th


def zone_dir(out_dir: Path | str, zone: str) -> Path:
    return Path(out_dir) / zone.replace("/", "-")


def main(inputs_file: str, out_dir: str, zones: list[str]) -> None:
    if os.environ.get("TZ") != zones[0]:
        raise SystemExit(f"start the probe with TZ={zones[0]}, its first zone")
    inputs = json.loads(Path(inputs_file).read_text())
    spark = get_spark(
        "time-zone-probe",
        master="local[1]",
        ui=False,
        conf={"spark.sql.shuffle.partitions": "1", "spark.driver.memory": "1g"},
    )
    for zone in zones:
        os.environ["TZ"] = zone
        time.tzset()
        probe(spark, inputs, zone_dir(out_dir, zone))
    spark.stop()


def probe(spark: SparkSession, inputs: dict[str, str], out: Path) -> None:
    """Every time-sensitive path once, in the current OS zone, into ``out``."""
    events = inputs["events"]
    spine = active_entity_spine(spark, events, [A, B], lookback="7d")
    features = WindowAggregates(
        sourceTable=events, windows=["1d", "7d"], aggregations=[{"agg": "count"}]
    ).transform(spine)
    matrix = add_labels(
        features, events, horizon="7d", event_filter="event_type = 'purchase'", kind="count"
    )
    matrix.write.format("delta").save(str(out / "matrix"))

    started = time.time_ns() // 1000
    base = {"model": "m@production", "registry_root": inputs["registry"]}
    run_scoring(spark, ScoreConfig(**base, output_table=str(out / "scores")), A)
    users = ScoringSpineConfig(users_table=inputs["users"])
    run_scoring(spark, ScoreConfig(**base, output_table=str(out / "scores_users"), spine=users), B)
    finished = time.time_ns() // 1000

    ingest = {
        "source": {
            "format": "csv",
            "paths": [inputs["ingest_csv"]],
            "schema": {"user_id": "bigint", "event_time": "timestamp"},
        },
        "event_time": {"column": "event_time"},
        "events_table": str(out / "ingested"),
        "quarantine_table": str(out / "ingested_quarantine"),
    }
    ingested = run_ingest(spark, from_mapping(ingest, IngestConfig), A, run_id="probe")

    offset = dt.datetime(2024, 3, 17, tzinfo=dt.timezone.utc).astimezone().utcoffset()
    assert offset is not None
    values = {
        "offset_hours": offset.total_seconds() / 3600,
        "schedule": [t.isoformat() for t in as_of_schedule(dt.date(2024, 3, 3), B, "7d")],
        "complete_until": labels_complete_until(spark, events, "event_time").isoformat(),
        "scoring_started_us": started,
        "scoring_finished_us": finished,
        "ingest_counts": [
            ingested.read,
            ingested.written,
            ingested.quarantined,
            ingested.outside,
        ],
    }
    (out / "python.json").write_text(json.dumps(values))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
