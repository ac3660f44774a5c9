from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from sparkml_prod.monitoring.dashboard import write_dashboard
from sparkml_prod.monitoring.history import write_history
from sparkml_prod.monitoring.records import MetricRecord

JUNE1, JUNE2 = dt.date(2024, 6, 1), dt.date(2024, 6, 2)
EDGES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
REFERENCE = (EDGES, [0.3, 0.25, 0.2, 0.15, 0.1])
SECTIONS = [
    "Latest run: warnings and alerts",
    "Feature drift (PSI)",
    "Score distribution",
    "Realised AUC per variant",
    "Holdout uplift",
    "Row counts",
]


def rec(
    as_of: dt.date,
    variant: str,
    metric: str,
    feature: str | None,
    value: float | None,
    status: str = "ok",
    detail: str | None = None,
    warn: float | None = None,
    alert: float | None = None,
) -> MetricRecord:
    return MetricRecord(
        as_of, "churn", 3, variant, metric, feature, value, warn, alert, status, detail
    )


def interval(low: float, high: float) -> str:
    return json.dumps({"low": low, "high": high})


def day(as_of: dt.date, psi: dict[str, float], shares: list[float]) -> list[MetricRecord]:
    records = []
    for feature, value in psi.items():
        status = "alert" if value >= 0.25 else "warn" if value >= 0.1 else "ok"
        records.append(rec(as_of, "all", "psi", feature, value, status, warn=0.1, alert=0.25))
    for i, share in enumerate(shares):
        bin_ = {"bin": i, "edge_low": EDGES[i], "edge_high": EDGES[i + 1]}
        if i == 0:
            bin_["edge_low"] = -float("inf")  # an open outer bin, as frozen bins have
        records.append(rec(as_of, "all", "score_share", "score", share, detail=json.dumps(bin_)))
    for variant, auc, count in (("champion", 0.74, 9000.0), ("challenger", 0.76, 1000.0)):
        records.append(
            rec(
                as_of,
                variant,
                "roc_auc",
                None,
                auc + (as_of.day - 1) * 0.01,
                detail=interval(auc - 0.02, auc + 0.02),
            )
        )
        records.append(rec(as_of, variant, "row_count", None, count + as_of.day))
    records.append(
        rec(as_of, "challenger", "auc_difference", None, 0.02, detail=interval(-0.01, 0.05))
    )
    records.append(rec(as_of, "treatment", "uplift", None, 0.031, detail=interval(0.01, 0.05)))
    return records


HISTORY = {
    "monitor-2024-06-01": day(
        JUNE1, {"tenure": 0.02, "spend": 0.05, "region": 0.01}, [0.3, 0.25, 0.2, 0.15, 0.1]
    ),
    "monitor-2024-06-02": day(
        JUNE2, {"tenure": 0.04, "spend": 0.31, "region": 0.12}, [0.2, 0.2, 0.2, 0.2, 0.2]
    ),
}


def images(page: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)


@pytest.fixture(scope="module")
def history_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    table = str(tmp_path_factory.mktemp("dashboard") / "history")
    for hour, (run_id, records) in enumerate(HISTORY.items()):
        write_history(spark, table, run_id, records, dt.datetime(2024, 6, 3, hour))
    return table


def test_dashboard_draws_every_section_and_the_latest_alerts(
    spark: SparkSession, history_table: str, tmp_path: Path
) -> None:
    path = write_dashboard(spark, history_table, "churn", str(tmp_path / "out"), REFERENCE)
    assert path == str(tmp_path / "out" / "dashboard.html")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dashboard.html"]
    page = Path(path).read_text(encoding="utf-8")
    assert len(images(page)) == 5
    assert re.findall(r"<h2>([^<]*)</h2>", page) == SECTIONS
    assert "No data yet" not in page
    assert "Latest run <code>monitor-2024-06-02</code>, computed 2024-06-03 01:00:00 UTC." in page
    # the latest run's alert and warning, alert first; not the first run's rows
    rows = re.findall(
        r"<tr><td>(alert|warn)</td><td>([\d-]+)</td><td>3</td><td>all</td>"
        r"<td>psi</td><td>(\w+)</td>",
        page,
    )
    assert rows == [("alert", "2024-06-02", "spend"), ("warn", "2024-06-02", "region")]
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing external to fetch


def test_dashboard_of_an_empty_history_still_renders(
    spark: SparkSession, history_table: str, tmp_path: Path
) -> None:
    for table, model in ((str(tmp_path / "absent"), "churn"), (history_table, "other")):
        page = Path(write_dashboard(spark, table, model, str(tmp_path / model))).read_text()
        assert images(page) == []
        assert page.count('<p class="empty">No data yet.</p>') == 5
        assert f"No monitoring run yet for model {model} in {table}." in page
        assert re.findall(r"<h2>([^<]*)</h2>", page) == SECTIONS
