# The few commands a developer runs. `make demo` and `make test` set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test lint protos clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/strata demo

# worksteal: the heaviest tests sit together in collection order (e2e, then integration), and plain `load`
# scheduling handed one worker nearly all of them (743 s of the suite's 1,044) while the other sat idle
test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy strata coordinator worker dashboard_api

protos: setup
	$(PY) -m strata.protogen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
