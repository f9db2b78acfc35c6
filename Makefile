# swudi_lab — two commands matter: `make demo` (the main job, a few minutes) and `make test` (all tests).
# `make study` is the full three-seed run behind the README's table. All run `make setup` first,
# so they work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup browser demo study test toy-demo bench clean

# Creates .venv if missing and installs swudi_lab with every extra (notebooks, test, hub; a plain
# `pip install swudi_lab` is the lean core), pinned through constraints.txt (torch==2.13.0) so a
# CPU-only machine never pulls CUDA builds. Idempotent: re-runs only when pyproject.toml or
# constraints.txt changed.
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[notebooks,test,hub]"
	$(PY) -c "import swudi_lab, timm, torch; print('swudi_lab ready: torch', torch.__version__, '| timm', timm.__version__)"
	touch $(STAMP)

# Headless Chromium for the live-JupyterLab check of the notebooks (tests/test_notebooks_jupyterlab.py,
# tools/jupyterlab_check.py), driven by the playwright package (installed by `make setup`) with
# Debian's chromium: no browser download. Installed from Debian's packages when missing and the
# system allows it (root + apt-get); otherwise the check says why it skips (under CI it fails).
browser: setup
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the live JupyterLab check ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	  || echo "warning: could not install chromium; the live JupyterLab check will skip"; \
	else echo "note: chromium missing and apt-get unavailable; the live JupyterLab check will skip"; fi
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet -c constraints.txt playwright \
	  || echo "warning: could not install playwright; the live JupyterLab check will skip"

# The fast demo: the shipped seed 0, every method on the whole test splits, accuracy vs kappa, the report.
demo: setup
	$(PY) -m swudi_lab.cli demo

# The study: seeds 0, 1, 2 (1 and 2 fine-tuned on first use), every sweep, mean ± std; each seed cached.
study: setup
	$(PY) -m swudi_lab.cli study

toy-demo: setup
	$(PY) -m swudi_lab.cli demo --toy

# Unit and behaviour tests (incl. the live-JupyterLab check of the notebooks in headless Chromium) and every
# notebook top to bottom through nbval (lax: outputs are not compared; the notebooks' asserts are).
test: setup browser
	$(PY) -m pytest -q --nbval-lax --nbval-current-env tests notebooks

bench: setup
	$(PY) benchmarks/merge_cost.py

clean:
	rm -rf $(VENV) results .pytest_cache
