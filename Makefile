# Every target makes its own virtual environment (.venv) on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv test lint pytest test-clock demo bench clean lock deb try-live

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check daemon gsm tests
	$(BIN)/ruff format --check daemon gsm tests
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint pytest

# The tests that touch time again under libfaketime (apt-get install faketime): 23:59:55
# in each office zone the tests use, UTC, and across DST changes; tests/clock/run.py.
# One combination: $(BIN)/python -m tests.clock.run --only "America/Chicago 2026-11-01"
test-clock: $(STAMP)
	$(BIN)/python -m tests.clock.run $(CLOCK_ARGS)

demo: $(STAMP)
	$(BIN)/textback demo

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

# `textback check --live` against the replay server (a fake Asterisk) and the modem
# simulator: from a fresh clone, this one command is the whole way to a green check.
try-live: $(STAMP)
	$(BIN)/python -m tests.trylive

# build/textback_<version>_<arch>.deb for fleets (packaging/build-deb.sh says why not
# dh-virtualenv); lintian's verdict when lintian is installed.
deb:
	packaging/build-deb.sh build
	if command -v lintian >/dev/null; then lintian --fail-on error build/textback_*.deb; fi

# requirements.lock: every dependency (and setuptools, to build textback itself) pinned
# with the sha256 of every file PyPI has for that version, so install.sh's
# `pip install --require-hashes` works on amd64, arm64 and armhf alike. Refresh it after a
# change to pyproject.toml's dependencies, or to take newer versions: `make lock`.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip-tools
	.venv-lock/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-find-links --no-emit-index-url --output-file=requirements.lock \
	  pyproject.toml packaging/requirements-build.in
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
