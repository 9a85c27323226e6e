# The two commands a newcomer runs: `make demo` and `make test`. Both do their own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml schema compiler runtime | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict
	touch $(STAMP)

SEED := examples/seed/dcnw.yaml examples/seed/minasi.yaml

demo: $(STAMP)
	$(BIN)/mailwright validate $(SEED) examples/multisite/contoso.yaml
	$(BIN)/mailwright compile $(SEED) --out build
	cat build/DCNW/gwart.txt
	$(BIN)/mailwright route mark@minasi.com --from athena $(SEED)
	$(BIN)/mailwright apply $(SEED) --state .mailwright --auto-approve
	$(BIN)/mailwright status --state .mailwright
	$(BIN)/python examples/seed/journey.py --state .mailwright

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy -p mailwright.schema -p mailwright.compiler -p mailwright.runtime
	$(BIN)/mypy tests benchmarks

# Branch coverage is reported, never enforced: of pytest's own process, and with
# COVERAGE_PATCH=subprocess also of the CLI, host and supervisor processes the tests start
# (about 25% more CPU time; see [tool.coverage] in pyproject.toml).
COVERAGE_PATCH ?= fork
test: lint typecheck
	COVERAGE_PATCH=$(COVERAGE_PATCH) $(BIN)/pytest --cov --cov-report=term:skip-covered

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
