"""One end-to-end run each: train, score (what the CLI and the spark-submit jobs call)."""
