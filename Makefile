# Quick start: `make demo` (set up and segment the bundled sample), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := LeftAtriumSeg/Resources/SampleData/la_022_crop.nii.gz
DEMO_OUTPUT := demo-output

.PHONY: setup demo lint test bench clean

$(BIN)/leftatriumseg: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/leftatriumseg

demo: setup
	$(BIN)/leftatriumseg segment $(SAMPLE) --output-dir $(DEMO_OUTPUT) --overwrite

# pyflakes-level lint first (pyproject.toml): it reaches the benchmarks, which no test runs.
lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/segment_speed.py

clean:
	rm -rf $(VENV) $(DEMO_OUTPUT)
