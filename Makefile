# `make test` and `make run` install everything they need into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install test test-fast run data lock config compile bench clean stack stack-down e2e espeak-ng flite image \
	e2e-image

install: $(STAMP)

# Reinstalls only when the lock or the project's metadata changed.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

# Every test, on 2 workers; the tests sharing a whole pipeline run stay on one worker
# (--dist loadgroup), so each such run is made once. About 3 minutes on 2 cores.
test: install espeak-ng flite
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

# The edit-run loop's tier: everything but the kfp.local pipeline runs and the step commands
# run in processes of their own (about 85 s on 2 cores; pyproject.toml's `slow` marker).
test-fast: install espeak-ng flite
	$(PY) -m pytest -q -n 2 -m "not slow" tests

# configs/default.yaml from the typed config (components/config.py), where keys are declared.
config: install
	$(PY) -m components.config > configs/default.yaml

# The speech synthesiser of `emoalign sample-corpus --voice tts` (its tests skip without it).
espeak-ng:
	@command -v espeak-ng >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) || \
		echo "could not install espeak-ng (apt-get install espeak-ng): the TTS tests will skip"

# The speech synthesiser of `emoalign sample-corpus --voice flite` (its tests skip without it).
flite:
	@command -v flite >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite) || \
		echo "could not install flite (apt-get install flite): the flite tests will skip"

# The services infra/k8s deploys, on this machine: PostgreSQL, an S3 server (moto) and
# `mlflow server` on 127.0.0.1, files and logs in $(STACK_DIR); `source $(STACK_DIR)/env.sh`
# to use them. Installs PostgreSQL (apt-get) and requirements-e2e.txt when missing.
STACK_DIR ?= runs/stack
E2E_STAMP := $(VENV)/.e2e-installed

$(E2E_STAMP): $(STAMP) requirements-e2e.txt infra/requirements-server.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock \
		-r requirements-e2e.txt
	@touch $@

stack: $(E2E_STAMP)
	$(PY) infra/stack.py up --dir $(STACK_DIR)

stack-down:
	$(PY) infra/stack.py down --dir $(STACK_DIR)

# End-to-end tests: the pipeline against a stack of their own (free ports, a scratch folder)
# and the project image built and run (e2e/test_image.py; it skips, saying why, without
# buildah or 20 GB free). About 10 minutes on 2 cores with the image cache warm; a cold cache
# adds the wheelhouse, the Debian base and every layer, about 6 minutes more
# (benchmarks/RESULTS.md).
# `make test` does not run them.
e2e: $(E2E_STAMP)
	EMOALIGN_IMAGE_CACHE=$(IMAGE_CACHE) $(PY) -m pytest -q -rs e2e --image

# The project image (infra/Dockerfile), built with buildah on this machine by infra/image.py:
# buildah/debootstrap from apt-get when missing, a wheelhouse downloaded once per lock, the
# python base or, where it cannot be pulled, a Debian-made one (infra/README.md, section 11).
# IMAGE_CACHE holds the wheelhouse (about 4 GB) and the build records; outside the checkout,
# so fresh clones on one machine (CI) reuse it.
IMAGE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/emoalign/image
image: install
	$(PY) infra/image.py build --cache $(IMAGE_CACHE)

# The image tests alone (e2e/test_image.py, part of `make e2e`: builds it first). Skips when
# buildah cannot be installed or the disk is short of 20 GB.
e2e-image: $(E2E_STAMP)
	EMOALIGN_IMAGE_CACHE=$(IMAGE_CACHE) $(PY) -m pytest -q e2e/test_image.py --image

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

# Re-resolve the lock from pyproject.toml in a scratch venv (needs the package index), and
# the image's lock (infra/requirements-runtime.lock: its runtime part) from it.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	.venv-lock/bin/pip freeze --exclude-editable --disable-pip-version-check | sort > requirements.lock
	.venv-lock/bin/python infra/runtime_lock.py
	rm -rf .venv-lock

clean:
	rm -rf runs .pytest_cache
