# Two entry points for a fresh machine with only python3: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/pip check
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO_DIR)

# Two pytest workers: a test's process leaves a core idle much of the time
# (start-up, tracing, Python), so two of them share two cores well.
test: $(STAMP)
	$(BIN)/python -m pytest tests -n 2

bench: $(STAMP)
	$(BIN)/escm2-bench --output_json=bench.json

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
