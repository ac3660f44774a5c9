# All set-up happens here, on demand: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
JARS := $(VENV)/.delta-jars
# Delta's Maven artifact for this Spark line; Ivy reads ~/.m2 first, so Maven can fill it.
DELTA_ARTIFACT := io.delta:delta-spark_4.2_2.13:4.4.0
PYTEST_ARGS ?=

.PHONY: setup demo test lint dist clean

setup: $(JARS)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): setup.py constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Resolve Delta's jars into the Ivy cache once, so no test or job downloads them.
$(JARS): $(INSTALLED)
	$(PY) -m sparkml_prod.session > $(VENV)/delta-jars.log 2>&1 \
	  || { mvn -q dependency:get -Dartifact=$(DELTA_ARTIFACT) \
	       && $(PY) -m sparkml_prod.session > $(VENV)/delta-jars.log 2>&1; } \
	  || { tail -40 $(VENV)/delta-jars.log; exit 1; }
	touch $@

demo: setup
	$(VENV)/bin/sparkml-prod generate --config conf/generate.yaml
	$(VENV)/bin/sparkml-prod features --config conf/features_job.yaml
	$(VENV)/bin/sparkml-prod train --config conf/train.yaml
	@echo "Delta tables under $(CURDIR)/demo-output/tables, models under $(CURDIR)/demo-output/models"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check sparkml_prod jobs tests bench
	$(VENV)/bin/mypy sparkml_prod

clean:
	rm -rf demo-output bench-output dist build *.egg-info
