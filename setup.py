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
    # Ranges here; the exact set every machine and CI installs is in constraints.txt.
    install_requires=[
        "pyspark==4.2.0",
        # The 4.4.0 jars are the newest Delta build for Spark 4.2 served on Maven
        # Central; the pip package must match the jars it asks Ivy for.
        "delta-spark==4.4.0",
        "xgboost-cpu>=3.2,<3.3",
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "pyyaml>=6",
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": ["pytest", "chispa", "ruff", "mypy", "scikit-learn", "duckdb", "types-PyYAML"],
    },
    entry_points={"console_scripts": ["sparkml-prod=sparkml_prod.cli:main"]},
)
