# relreward: `make demo` and `make test` install into .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel on this machine; GPU users: make install TORCH_SPEC='torch>=2.4' (or keep their own build)
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/relreward pipeline device=cpu threads=1  # one thread: figures independent of the core count (README)

test: install
	$(BIN)/python -m pytest -n auto --dist loadfile  # test files side by side, one per core

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_extract.py
	$(BIN)/python scripts/bench_plan.py

clean:
	rm -rf runs outputs multirun
