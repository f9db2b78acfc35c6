"""The course notebooks as a student meets them: run in a live JupyterLab in headless Chromium.

One JupyterLab server and one Chromium (Debian's, driven by playwright through ``executable_path``)
for the whole module; each notebook is opened, run with *Run All Cells*, checked for error output,
drawn figures and live explorers, each explorer's first control is moved and its figure must
change, and a screenshot is taken (``SWUDI_LAB_SAVE_SCREENSHOTS=1`` writes ``docs/img/<notebook>.png``,
the README's pictures). See ``tools/jupyterlab_check.py``.

Chromium or playwright missing: skipped, saying why; under ``CI`` (or ``SWUDI_LAB_REQUIRE_BROWSER``)
or where Chromium is installed, a missing piece is a failure: the check must run.
``SWUDI_LAB_NOTEBOOKS=01,07`` runs only the notebooks whose names start with those prefixes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("jupyterlab_check", ROOT / "tools" / "jupyterlab_check.py")
check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = check  # dataclasses look their module up in sys.modules
_spec.loader.exec_module(check)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
_only = [p.strip() for p in os.environ.get("SWUDI_LAB_NOTEBOOKS", "").split(",") if p.strip()]
if _only:
    NOTEBOOKS = [p for p in NOTEBOOKS if any(p.name.startswith(o) for o in _only)]


def test_the_course_has_seven_notebooks():
    assert len(sorted((ROOT / "notebooks").glob("0[1-7]_*.ipynb"))) == 7


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    why = check.missing()
    if why:
        must = check.required()
        if must:
            pytest.fail(f"the live JupyterLab check cannot run: {why}. It is required here ({must}).")
        pytest.skip(f"the live JupyterLab check cannot run: {why}")
    with check.LabSession(tmp_path_factory.mktemp("jupyterlab")) as session:
        yield session


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(path, lab):
    save = os.environ.get("SWUDI_LAB_SAVE_SCREENSHOTS", "") not in ("", "0")
    res = lab.check(path, save_screenshot=save)
    print(res.summary())
    for w in res.warnings:
        warnings.warn(f"{res.name}: {w}", stacklevel=1)
    assert res.ok, f"{res.name}: " + "; ".join(res.problems)
