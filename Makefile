# swudi_lab — two commands matter: `make demo` (the main job) and `make test` (all tests).
# Both run `make setup` first, so they work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup demo test toy-demo bench clean

# Creates .venv if missing and installs swudi_lab with every dependency, pinned through
# constraints.txt (torch==2.13.0) so a CPU-only machine never pulls CUDA builds.
# Idempotent: re-runs only when pyproject.toml or constraints.txt changed.
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e .
	$(PY) -c "import swudi_lab, timm, torch; print('swudi_lab ready: torch', torch.__version__, '| timm', timm.__version__)"
	touch $(STAMP)

demo: setup
	$(PY) -m swudi_lab.cli demo

toy-demo: setup
	$(PY) -m swudi_lab.cli demo --toy

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/merge_cost.py

clean:
	rm -rf $(VENV) results .pytest_cache
