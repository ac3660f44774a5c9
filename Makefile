# All set-up happens here, on demand: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
JARS := $(VENV)/.delta-jars
# Hadoop's MiniDFSCluster and its runtime jars for the HDFS tests (tests/hdfs.py), at the
# Hadoop line pyspark bundles; never on a Spark classpath.
HDFS_JARS := $(VENV)/hdfs-jars
HDFS_JARS_DONE := $(HDFS_JARS)/.fetched
# Debian's PostgreSQL server, which the JDBC tests start on 127.0.0.1 (tests/postgres.py).
POSTGRESQL := $(VENV)/.postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Delta's Maven artifact for this Spark line; Ivy reads ~/.m2 first, so Maven can fill it.
DELTA_ARTIFACT := io.delta:delta-spark_4.2_2.13:4.4.0
PYTEST_ARGS ?=
# Where `make demo` submits the scoring job (e.g. MASTER=spark://127.0.0.1:7077), and its
# dates: a first one before the drift that conf/generate.yaml injects, a second one after.
MASTER ?= local[2]
FIRST_AS_OF ?= 2024-06-01
SCORE_AS_OF ?= 2024-07-01
SUBMIT := PYSPARK_PYTHON=$(abspath $(PY)) PYSPARK_DRIVER_PYTHON=$(abspath $(PY)) \
	$(VENV)/bin/spark-submit --master '$(MASTER)' --jars "$$($(PY) -m sparkml_prod.core.jars)" \
	--py-files dist/sparkml_prod.zip --driver-memory 4g --conf spark.sql.shuffle.partitions=8 \
	--conf spark.databricks.delta.snapshotPartitions=2 \
	--driver-java-options -Dlog4j2.configurationFile=$(CURDIR)/conf/log4j2.properties

# `make bench`: every benchmark in turn at the issue's sizes, then docs/benchmarks.md from
# their bench/results/<bench>.json. Not part of `make test` or CI: run it on a quiet
# machine (about 70 minutes on 2 cores). Extra arguments per benchmark, e.g.
# `make bench SCALE_ARGS="--events 1000000 5000000"`; `make bench-smoke`: small sizes.
FEATURES_ARGS ?=
PROFILE_ARGS ?=
TRAINING_ARGS ?=
# the model stage alone, at each of these sizes (the issue's 1M and 5M users)
BOOSTER_ROWS ?= 1000000 5000000
BOOSTER_ARGS ?=
SCORING_ARGS ?=
SCALE_ARGS ?=
# bench/training.py reads the demo's training matrix; built like `make demo` does.
DEMO_MATRIX := demo-output/tables/training_matrix/_delta_log

.PHONY: setup demo test lint dist clean bench bench-smoke bench-report hdfs-jars

setup: $(JARS)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): setup.py constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Resolve Delta's jars into the Ivy cache once, so no test or job downloads them. Ivy reads
# ~/.m2 first and fails on a POM there without its jar: Maven then fetches Delta, and each
# jar Ivy reported missing, and Ivy tries again. Then the test session's packages
# (tests/session_packages.py: S3A for the s3a:// tests), so no test run resolves them.
$(JARS): $(INSTALLED) tests/session_packages.py
	$(PY) -m sparkml_prod.core.session > $(VENV)/delta-jars.log 2>&1 \
	  || { mvn -q dependency:get -Dartifact=$(DELTA_ARTIFACT); \
	       grep -oE 'download failed: [A-Za-z0-9_.#;!-]+' $(VENV)/delta-jars.log \
	         | sed -E 's/^download failed: ([^#]+)#([^;]+);([^!]+)!.*/\1:\2:\3/' | sort -u \
	         | while read -r artifact; do \
	             mvn -q dependency:get -Dtransitive=false -Dartifact=$$artifact; done; \
	       $(PY) -m sparkml_prod.core.session > $(VENV)/delta-jars.log 2>&1; } \
	  || { tail -40 $(VENV)/delta-jars.log; exit 1; }
	packages="$$(cd tests && $(abspath $(PY)) -c \
	  'from session_packages import TEST_PACKAGES; print(" ".join(TEST_PACKAGES))')" \
	  && $(PY) -m sparkml_prod.core.jars $$packages > /dev/null 2>> $(VENV)/delta-jars.log \
	  || { tail -40 $(VENV)/delta-jars.log; exit 1; }
	touch $@

# `mvn dependency:copy-dependencies` of tests/hdfs-minicluster.pom.xml (the minicluster and
# what it needs at run time: hadoop-client-api/-runtime, slf4j, ...) at pyspark's Hadoop
# version, then its web apps extracted next to the jars (the NameNode and DataNode start
# faster than when Jetty unpacks them from the 56 MB jar each time).
hdfs-jars: $(HDFS_JARS_DONE)

$(HDFS_JARS_DONE): tests/hdfs-minicluster.pom.xml | $(INSTALLED)
	rm -rf $(HDFS_JARS)
	mvn -q -f tests/hdfs-minicluster.pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	  -Dhadoop.version=$$($(PY) -c 'from sparkml_prod.core.jars import hadoop_version; print(hadoop_version())') \
	  -DoutputDirectory=$(abspath $(HDFS_JARS))
	$(PY) -c "import glob, zipfile; \
	  jar = zipfile.ZipFile(glob.glob('$(HDFS_JARS)/hadoop-client-minicluster-*.jar')[0]); \
	  jar.extractall('$(HDFS_JARS)/resources', [n for n in jar.namelist() if n.startswith('webapps/')])"
	touch $@

# The tests run their own server from these binaries; the package's own cluster is unused.
$(POSTGRESQL): | $(PY)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; }
	ls /usr/lib/postgresql/*/bin/initdb
	touch $@

# The wheel (for pip on executors' images) and a zip of the package for --py-files.
dist: $(INSTALLED)
	rm -rf dist && mkdir -p dist
	$(PY) -m pip wheel --quiet --no-deps -w dist .
	$(PY) -c "import pathlib, zipfile; \
	  z = zipfile.ZipFile('dist/sparkml_prod.zip', 'w', zipfile.ZIP_DEFLATED); \
	  [z.write(f) for f in sorted(pathlib.Path('sparkml_prod').rglob('*')) \
	   if f.is_file() and '__pycache__' not in f.parts]; z.close()"
	@ls -l dist

demo: setup dist
	$(VENV)/bin/sparkml-prod generate --config conf/generate.yaml
	$(VENV)/bin/sparkml-prod features --config conf/features_job.yaml
	$(VENV)/bin/sparkml-prod train --config conf/train.yaml
	$(SUBMIT) jobs/score.py --config conf/score.yaml --as-of $(FIRST_AS_OF)
	$(SUBMIT) jobs/score.py --config conf/score.yaml --as-of $(SCORE_AS_OF) --show 5
	$(VENV)/bin/sparkml-prod monitor --config conf/monitor.yaml --as-of $(FIRST_AS_OF)
	$(VENV)/bin/sparkml-prod monitor --config conf/monitor.yaml --as-of $(SCORE_AS_OF)
	$(VENV)/bin/sparkml-prod monitor report --config conf/monitor.yaml
	$(VENV)/bin/sparkml-prod retrain --config conf/train.yaml --as-of $(SCORE_AS_OF)
	@echo "Delta tables under $(CURDIR)/demo-output/tables, models under $(CURDIR)/demo-output/models"

test: setup $(HDFS_JARS_DONE) $(POSTGRESQL)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check sparkml_prod jobs tests bench
	$(VENV)/bin/mypy sparkml_prod

$(DEMO_MATRIX): | $(JARS)
	$(VENV)/bin/sparkml-prod generate --config conf/generate.yaml
	$(VENV)/bin/sparkml-prod train --config conf/train.yaml

bench: setup $(DEMO_MATRIX)
	$(PY) bench/features.py $(FEATURES_ARGS)
	$(PY) bench/features_profile.py $(PROFILE_ARGS)
	$(PY) bench/training.py $(TRAINING_ARGS)
	for rows in $(BOOSTER_ROWS); do $(PY) bench/booster_scoring.py --rows $$rows $(BOOSTER_ARGS) || exit 1; done
	$(PY) bench/scoring.py $(SCORING_ARGS)
	$(PY) bench/scale.py $(SCALE_ARGS)
	$(PY) bench/report.py

bench-smoke:
	$(MAKE) bench FEATURES_ARGS="--events 200000 --repeats 1" TRAINING_ARGS="--repeats 1" \
	  PROFILE_ARGS="--runs 200000=snapshots_1 200000=snapshots_26" \
	  BOOSTER_ROWS=50000 BOOSTER_ARGS="--repeats 1" \
	  SCORING_ARGS="--large-users 100000 --repeats 1" SCALE_ARGS="--events 200000 1000000"

bench-report: setup
	$(PY) bench/report.py

clean:
	rm -rf demo-output bench-output dist build *.egg-info
