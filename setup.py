"""sparkml-prod: point-in-time features, XGBoost training and batch scoring on Spark."""

from pathlib import Path

from setuptools import find_packages, setup

about: dict[str, str] = {}
exec((Path(__file__).parent / "sparkml_prod" / "_version.py").read_text(), about)

setup(
    name="sparkml-prod",
    version=about["__version__"],
    description=__doc__,
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sparkml_prod", "sparkml_prod.*"]),
    package_data={"sparkml_prod": ["py.typed"]},
    # Compatible ranges here (a cluster brings its own pyspark); the exact set every
    # machine and CI installs and tests is pinned in constraints.txt.
    install_requires=[
        "pyspark>=4.0,<5",
        # The pip package must match the Delta jars the session asks for
        # (io.delta:delta-spark_<spark>_2.13:<version>): keep both on one line.
        "delta-spark>=4.0,<5",
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "pyyaml>=6",
        "matplotlib>=3.8",
    ],
    # XGBoost comes in two builds with one import name: the CPU-only wheel, or the full
    # one with CUDA for GPU clusters. Install exactly one of them.
    extras_require={
        "cpu": ["xgboost-cpu>=3.2,<4"],
        "gpu": ["xgboost>=3.2,<4"],
        # Optional MLflow tracking and registry (sparkml_prod.registry.mlflow_registry);
        # the library imports and runs without it. mlflow 3.17 caps pyarrow below 26.
        "mlflow": ["mlflow>=3.17,<3.18"],
        "dev": [
            "xgboost-cpu>=3.2,<4",
            "mlflow>=3.17,<3.18",
            "pytest",
            "chispa",
            "ruff",
            "mypy",
            "scikit-learn",
            "duckdb",
            "types-PyYAML",
            "xxhash",  # an independent reference of Spark's xxhash64 in tests
            # An S3-compatible server on 127.0.0.1 for the s3a:// tests (tests/s3.py); its
            # botocore needs python-dateutil<3, hence that pin in constraints.txt.
            "moto[server]",
        ],
    },
    entry_points={"console_scripts": ["sparkml-prod=sparkml_prod.cli:main"]},
)
