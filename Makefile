# `make test` and `make run` install everything they need into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install test run data lock compile bench clean

install: $(STAMP)

# Reinstalls only when the lock or the project's metadata changed.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

test: install
	$(PY) -m pytest -q -n 2 tests

run: install
	$(VENV)/bin/emoalign run

# The default sample corpus, byte-identical to what data.dvc records.
data: install
	@test -d data/IEMOCAP_full_release || $(VENV)/bin/emoalign sample-corpus data/IEMOCAP_full_release --workers 2

# Every benchmark (about 16 minutes on 2 cores); rewrites benchmarks/RESULTS.md.
bench: install
	$(PY) benchmarks/run_all.py

compile: install
	$(VENV)/bin/emoalign compile --out pipelines/emoalign_pipeline.yaml

# Re-resolve the lock from pyproject.toml in a scratch venv (needs the package index).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	.venv-lock/bin/pip freeze --exclude-editable --disable-pip-version-check | sort > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf runs .pytest_cache
