# Every target creates the virtual environment it needs; only Python >= 3.11 is required.
# The environment installs the versions recorded in constraints.txt, the set CI last tested;
# `make lock` moves them to the newest that pyproject.toml allows.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
LOCK   := constraints.txt
# uv installs the pinned versions: the same set pip would, in a tenth of the time (CI
# installs both environments from nothing on every run). pip only installs uv itself.
UV_VERSION := 0.13.9
PIP := python -m pip install --quiet --disable-pip-version-check
# compat: a plain .pth entry for the checkout. The default editable mode maps packages with
# an import hook and warns about folders named like packages, as this flat layout has.
UV_INSTALL = $(1)/bin/uv pip install --quiet --python $(1)/bin/python

# checkov pins boto3 and packaging exactly, against ours: it gets an environment of its own.
CHECKOV_VENV  ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_LOCK  := constraints-checkov.txt

.PHONY: run simulate test lint bench soak lock clean checkov

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) uv==$(UV_VERSION)
	$(call UV_INSTALL,$(VENV)) --constraint $(LOCK) --config-settings editable_mode=compat --editable '.[dev]'
	touch $@

$(CHECKOV_STAMP): $(CHECKOV_LOCK)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/$(PIP) uv==$(UV_VERSION)
	$(call UV_INSTALL,$(CHECKOV_VENV)) --constraint $(CHECKOV_LOCK) checkov
	touch $@

checkov: $(CHECKOV_STAMP)  ## checkov in its own environment (tests/test_deploy_template.py runs it)

run: $(STAMP)  ## the whole pipeline on embedded defaults (Ctrl-C stops it)
	$(BIN)/crypto-live run $(ARGS)

simulate: $(STAMP)  ## the market simulator alone, on ws://127.0.0.1:8765
	$(BIN)/crypto-live simulate $(ARGS)

# Four workers on any machine: most cases wait on servers and timeouts, not on a CPU. Tests
# are handed out two at a time, so the minute-long fault cases (collected first) start on
# every worker at once instead of queueing on the first.
test: $(STAMP) $(CHECKOV_STAMP)  ## the whole test suite, fault cases included (4 pytest-xdist workers)
	$(BIN)/python -m pytest -n 4 --maxschedchunk 2 $(ARGS)

lint: $(STAMP)  ## ruff's lint and format checks, then mypy (strict) on the three packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)  ## each service against its contender (Quix S3FileSink, raw librdkafka, a BatchWriteItem loop): bench/results.{json,md,png}; exits 1 on a FAILed ratio
	$(BIN)/python -m bench $(ARGS)

SOAK_MINUTES ?= 10
SOAK_RATE    ?= 10000
# Opt-in, outside `make test`: the figures go to bench/soak.json and bench/soak.md.
soak: $(STAMP)  ## the whole pipeline for SOAK_MINUTES (10) at SOAK_RATE (10000) events/s: fails if anything is lost or doubled or a service's RSS grows 10 % after warm-up
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE) $(ARGS)

lock:  ## resolve the newest versions pyproject.toml allows into constraints.txt
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check '.[dev]'
	{ echo '# The versions CI last tested (make lock regenerates this file); used by make and the Dockerfile.'; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^crypto-live'; } > $(LOCK)
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check checkov
	{ sed -n '1,2p' $(CHECKOV_LOCK); .venv-lock/bin/python -m pip freeze; } > $(CHECKOV_LOCK).new
	mv $(CHECKOV_LOCK).new $(CHECKOV_LOCK)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache
