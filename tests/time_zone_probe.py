"""The library's time-sensitive paths, run in this process's OS time zone (``TZ``).

``tests/test_time_zones.py`` starts this script once per zone, in a new process (so a new
JVM and a new pyspark), with plain ``datetime.date`` as-of dates as a job would give:

    python tests/time_zone_probe.py INPUTS.json OUT_DIR

``INPUTS.json`` names the events table, the users table and the model registry. The
results go to ``OUT_DIR`` as Delta tables (``matrix``: spine, window features and labels;
``scores`` and ``scores_users``: two scoring runs) and ``python.json`` (Python-side values,
the zone's offset, the scoring run's start and end in epoch microseconds). Timestamps stay
Delta timestamps: the test renders them in its own UTC session, so nothing here formats
an instant in the OS zone.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from sparkml_prod.core.config import ScoreConfig, ScoringSpineConfig
from sparkml_prod.core.session import get_spark
from sparkml_prod.data.labels import add_labels, labels_complete_until
from sparkml_prod.data.spine import active_entity_spine, as_of_schedule
from sparkml_prod.features import WindowAggregates
from sparkml_prod.runs.score import run_scoring

A, B = dt.date(2024, 3, 10), dt.date(2024, 3, 17)  # New York moves its clocks on the 10th


def main(inputs_file: str, out_dir: str) -> None:
    inputs = json.loads(Path(inputs_file).read_text())
    out = Path(out_dir)
    spark = get_spark(
        "time-zone-probe",
        master="local[1]",
        ui=False,
        conf={"spark.sql.shuffle.partitions": "1", "spark.driver.memory": "1g"},
    )
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

    offset = dt.datetime(2024, 3, 17, tzinfo=dt.timezone.utc).astimezone().utcoffset()
    assert offset is not None
    values = {
        "offset_hours": offset.total_seconds() / 3600,
        "schedule": [t.isoformat() for t in as_of_schedule(dt.date(2024, 3, 3), B, "7d")],
        "complete_until": labels_complete_until(spark, events, "event_time").isoformat(),
        "scoring_started_us": started,
        "scoring_finished_us": finished,
    }
    (out / "python.json").write_text(json.dumps(values))
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
