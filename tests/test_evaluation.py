from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import DoubleType, StringType, StructField, StructType
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from sparkml_prod.core.errors import SchemaError, TrainingDataError
from sparkml_prod.modeling.evaluation import (
    BusinessValue,
    binned_scores,
    evaluate,
    score_histogram,
)
from sparkml_prod.modeling.report import write_report

SCHEMA = StructType([StructField("label", DoubleType()), StructField("score", DoubleType())])

# Ten users, best score first. Scores sit mid-bin for 10, 2 and 50 bins; 0.75 and 0.73
# share bin 7 of 10, which straddles the boundary of deciles 3 and 4.
TINY = [
    (1.0, 0.95),
    (1.0, 0.85),
    (0.0, 0.75),
    (1.0, 0.73),
    (0.0, 0.55),
    (1.0, 0.45),
    (0.0, 0.35),
    (0.0, 0.25),
    (0.0, 0.15),
    (0.0, 0.05),
]
TINY_LABELS = [label for label, _ in TINY]
TINY_SCORES = [score for _, score in TINY]


@pytest.fixture(scope="module")
def tiny(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(TINY, SCHEMA)


@pytest.fixture(scope="module")
def tiny_metrics(tiny: DataFrame) -> dict:
    return evaluate(
        tiny,
        bins=10,
        calibration_bins=2,
        business=BusinessValue(value_per_true_positive=10.0, cost_per_action=3.0),
    )


@pytest.fixture(scope="module")
def random_data() -> pd.DataFrame:
    rng = np.random.default_rng(20240601)
    n = 5_000
    label = (rng.random(n) < 0.3).astype(np.float64)
    score = 1.0 / (1.0 + np.exp(-(1.2 * (label - 0.5) + rng.normal(-0.8, 1.0, n))))
    # A fifth of the scores rounded to 3 decimals: ties, but never on a bin edge.
    tied = rng.random(n) < 0.2
    score[tied] = np.floor(score[tied] * 1000) / 1000 + 0.00025
    return pd.DataFrame({"label": label, "score": score})


def test_metrics_match_scikit_learn(spark: SparkSession, random_data: pd.DataFrame) -> None:
    y, p = random_data["label"].to_numpy(), random_data["score"].to_numpy()
    df = spark.createDataFrame(list(random_data.itertuples(index=False, name=None)), SCHEMA)

    metrics = evaluate(df)

    assert metrics["n"] == 5_000
    assert metrics["positives"] == int(y.sum())
    assert metrics["base_rate"] == int(y.sum()) / 5_000
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-3)
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=5e-3)
    assert metrics["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    json.dumps(metrics, allow_nan=False)  # JSON-safe: plain Python types only

    roc, pr = metrics["roc"], metrics["pr"]
    assert 150 <= len(roc["fpr"]) == len(roc["tpr"]) <= 201
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert 150 <= len(pr["recall"]) == len(pr["precision"]) <= 201
    assert pr["recall"][-1] == 1.0 and pr["precision"][-1] == metrics["base_rate"]

    edges = np.linspace(0.0, 1.0, 51)
    histogram = metrics["histogram"]
    assert histogram["edges"] == pytest.approx(edges.tolist(), abs=1e-15)
    assert histogram["positives"] == np.histogram(p[y == 1], edges)[0].tolist()
    assert histogram["negatives"] == np.histogram(p[y == 0], edges)[0].tolist()
    assert score_histogram(df) == histogram

    frame = pd.DataFrame({"bin": np.floor(p * 10).astype(int), "y": y, "p": p})
    expected = frame.groupby("bin").agg(n=("y", "size"), rate=("y", "mean"), mean=("p", "mean"))
    calibration = pd.DataFrame(metrics["calibration"]).set_index("bin")
    assert calibration.index.tolist() == expected.index.tolist()
    assert calibration["n"].tolist() == expected["n"].tolist()
    assert calibration["observed_rate"].to_numpy() == pytest.approx(expected["rate"], abs=1e-12)
    assert calibration["mean_score"].to_numpy() == pytest.approx(expected["mean"], abs=1e-12)

    # Deciles from the exact ranking differ from the binned ones only inside a bin.
    ranked = y[np.argsort(-p, kind="stable")]
    exact = [ranked[i * 500 : (i + 1) * 500].sum() for i in range(10)]
    assert [d["n"] for d in metrics["deciles"]] == pytest.approx([500.0] * 10)
    assert [d["positives"] for d in metrics["deciles"]] == pytest.approx(exact, abs=2)
    assert metrics["deciles"][-1]["cumulative_gain"] == pytest.approx(1.0)


def test_binned_scores_of_a_tiny_frame(tiny: DataFrame) -> None:
    expected = pd.DataFrame(
        {
            "bin": [0, 1, 2, 3, 4, 5, 7, 8, 9],
            "n": [1, 1, 1, 1, 1, 1, 2, 1, 1],
            "positives": [0, 0, 0, 0, 1, 0, 1, 1, 1],
            "score_sum": [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.75 + 0.73, 0.85, 0.95],
            "score_min": [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.73, 0.85, 0.95],
            "score_max": [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.75, 0.85, 0.95],
        }
    )
    pd.testing.assert_frame_equal(binned_scores(tiny, bins=10), expected)


def test_a_score_of_one_falls_in_the_last_bin(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1.0, 1.0), (0.0, 0.0)], SCHEMA)
    assert binned_scores(df, bins=4)[["bin", "n"]].values.tolist() == [[0, 1], [3, 1]]


def test_tiny_case_computed_by_hand(tiny_metrics: dict) -> None:
    m = tiny_metrics
    assert (m["n"], m["positives"], m["base_rate"]) == (10, 4, 0.4)
    # Pairs ordered right: 6 + 6 + (5 + a half for the tie with 0.75 in bin 7) + 4 of 24.
    assert m["roc_auc"] == pytest.approx(21.5 / 24, abs=1e-12)
    # Recall steps of 1/4 at precisions 1 (1 of 1), 1 (2 of 2), 3/4 (bin 7) and 4/6.
    assert m["pr_auc"] == pytest.approx(0.25 * (1 + 1 + 0.75 + 4 / 6), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(TINY_LABELS, TINY_SCORES), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(TINY_LABELS, TINY_SCORES), abs=1e-12)
    assert m["roc"]["fpr"] == pytest.approx([0, 0, 0, 1 / 6, 2 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert m["roc"]["tpr"] == pytest.approx([0, 0.25, 0.5, 0.75, 0.75, 1, 1, 1, 1, 1])
    assert m["pr"]["recall"] == pytest.approx([0.25, 0.5, 0.75, 0.75, 1, 1, 1, 1, 1])
    assert m["pr"]["precision"] == pytest.approx([1, 1, 0.75, 0.6, 4 / 6, 4 / 7, 0.5, 4 / 9, 0.4])

    assert m["calibration"] == [
        {"bin": 0, "n": 5, "mean_score": pytest.approx(0.25), "observed_rate": 0.2},
        {"bin": 1, "n": 5, "mean_score": pytest.approx(0.766), "observed_rate": 0.6},
    ]

    # (decile, positives, cumulative positives); one user per decile, bin 7 split in two.
    by_hand = [
        (1, 1.0, 1.0),
        (2, 1.0, 2.0),
        (3, 0.5, 2.5),
        (4, 0.5, 3.0),
        (5, 0.0, 3.0),
        (6, 1.0, 4.0),
        (7, 0.0, 4.0),
        (8, 0.0, 4.0),
        (9, 0.0, 4.0),
        (10, 0.0, 4.0),
    ]
    expected = [
        {
            "decile": d,
            "n": pytest.approx(1.0),
            "positives": pytest.approx(pos),
            "rate": pytest.approx(pos),
            "lift": pytest.approx(pos / 0.4),
            "cumulative_positives": pytest.approx(cum),
            "cumulative_gain": pytest.approx(cum / 4),
            "cumulative_lift": pytest.approx(cum / d / 0.4),
        }
        for d, pos, cum in by_hand
    ]
    assert m["deciles"] == expected

    assert m["histogram"]["edges"] == pytest.approx([i / 50 for i in range(51)])
    positives, negatives = [0] * 50, [0] * 50
    for i in (47, 42, 36, 22):
        positives[i] = 1
    for i in (37, 27, 17, 12, 7, 2):
        negatives[i] = 1
    assert (m["histogram"]["positives"], m["histogram"]["negatives"]) == (positives, negatives)

    # Contacting down to each bin: value 10 per positive reached, cost 3 per user.
    contacted = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    reached = [0, 1, 2, 3, 3, 4, 4, 4, 4, 4]
    thresholds = [None, 0.95, 0.85, 0.73, 0.55, 0.45, 0.35, 0.25, 0.15, 0.05]
    assert m["business"] == {
        "value_per_true_positive": 10.0,
        "cost_per_action": 3.0,
        "curve": [
            {
                "depth": pytest.approx(k / 10),
                "threshold": t,
                "contacted": k,
                "expected_profit": pytest.approx(10 * r - 3 * k),
            }
            for k, r, t in zip(contacted, reached, thresholds, strict=True)
        ],
        "best_depth": 0.6,
        "best_threshold": 0.45,
        "best_expected_profit": 22.0,
        "profit_contact_everyone": 10.0,
    }


def test_bad_input_is_refused_with_a_message(spark: SparkSession) -> None:
    with pytest.raises(TrainingDataError, match="have no rows"):
        evaluate(spark.createDataFrame([], SCHEMA))
    only_negatives = spark.createDataFrame([(0.0, 0.1), (0.0, 0.7), (0.0, 0.4)], SCHEMA)
    with pytest.raises(TrainingDataError) as error:
        evaluate(only_negatives)
    assert str(error.value) == (
        "Column 'label' of the predictions holds only class 0.0 (negatives) in all 3 rows; "
        "ROC AUC, PR AUC and lift need both classes. Evaluate on a test snapshot with "
        "positives and negatives (a longer label horizon or more users)."
    )
    with pytest.raises(TrainingDataError, match=r"only class 1\.0 \(positives\) in all 1 rows"):
        evaluate(spark.createDataFrame([(1.0, 0.3)], SCHEMA))

    with pytest.raises(SchemaError) as missing:
        evaluate(spark.createDataFrame([(1.0, 0.3)], SCHEMA), score_col="probability")
    assert str(missing.value) == (
        "Table 'predictions' is missing required column(s) probability. "
        "Columns present: label double, score double."
    )
    text = StructType([StructField("label", DoubleType()), StructField("score", StringType())])
    with pytest.raises(SchemaError, match="column 'score' has type string; expected tinyint"):
        score_histogram(spark.createDataFrame([(1.0, "0.3")], text))

    with pytest.raises(TrainingDataError, match=r"has 1 null or NaN score\(s\) among 3 rows"):
        evaluate(spark.createDataFrame([(1.0, 0.3), (0.0, None), (0.0, 0.2)], SCHEMA))
    with pytest.raises(TrainingDataError, match=r"has 1 value\(s\) other than 0\.0 and 1\.0"):
        binned_scores(spark.createDataFrame([(1.0, 0.3), (2.0, 0.6)], SCHEMA))
    with pytest.raises(TrainingDataError, match=r"has scores from -1\.5 to 2\.0; expected"):
        evaluate(spark.createDataFrame([(1.0, 2.0), (0.0, -1.5)], SCHEMA))

    with pytest.raises(ValueError, match=r"'bins' parameter of evaluate must be an int"):
        evaluate(only_negatives, bins=0)
    with pytest.raises(ValueError, match="'cost_per_action' parameter of BusinessValue"):
        BusinessValue(value_per_true_positive=1.0, cost_per_action=float("nan"))


def test_write_report(tmp_path: Path, tiny_metrics: dict) -> None:
    importance = {f"feature_{i}": float(i) for i in range(40)}
    folds = [{"fold": 1, "roc_auc": 0.71}, {"fold": 2, "roc_auc": 0.73}]
    train = {"edges": [0.0, 0.5, 1.0], "positives": [1, 3], "negatives": [6, 2]}

    path = write_report(
        str(tmp_path / "report"),
        tiny_metrics,
        title="Churn <v1>",
        model_description="XGBoost, 300 trees",
        train_histogram=train,
        feature_importance=importance,
        extra_sections={"Backtest folds": folds},
    )

    directory = tmp_path / "report"
    assert path == str(directory / "report.html")
    plots = ["roc", "pr", "calibration", "gains_lift", "score_histogram", "importance", "profit"]
    page = (directory / "report.html").read_text()
    for name in plots:
        png = (directory / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}" in page
    assert page.count("data:image/png;base64,") == len(plots)
    assert "<h1>Churn &lt;v1&gt;</h1>" in page and "XGBoost, 300 trees" in page
    for value in ("0.8958", "0.8542", "0.4000", f"{tiny_metrics['log_loss']:.4f}"):
        assert f"<td>{value}</td>" in page
    assert "<td>0.7660</td><td>0.6000</td>" in page  # calibration bin 1
    assert "<td>3</td><td>1.0000</td><td>0.5000</td><td>0.5000</td><td>1.2500</td>" in page
    assert "<h2>Backtest folds</h2><pre>[\n  {\n    &quot;fold&quot;: 1," in page

    document = json.loads((directory / "metrics.json").read_text())
    assert document == {
        **tiny_metrics,
        "feature_importance": importance,
        "extra_sections": {"Backtest folds": folds},
    }


def test_write_report_without_the_optional_parts(tmp_path: Path, tiny: DataFrame) -> None:
    metrics = evaluate(tiny, bins=10)
    write_report(str(tmp_path), metrics, title="t", model_description="d")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calibration.png",
        "gains_lift.png",
        "metrics.json",
        "pr.png",
        "report.html",
        "roc.png",
        "score_histogram.png",
    ]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    with pytest.raises(
        ValueError,
        match=r"lacks key\(s\) positives, base_rate, roc_auc, pr_auc, log_loss, brier\. Pass",
    ):
        write_report(str(tmp_path), {"n": 1}, title="t", model_description="d")
