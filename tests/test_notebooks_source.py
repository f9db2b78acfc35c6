"""The course notebooks as files: each ``.ipynb`` paired with its jupytext percent script ``.py``,
in sync, stored without outputs, Colab-ready, each with an explorer and checked numbers. (Fast:
nothing is executed; nbval and tests/test_notebooks_jupyterlab.py run them.) The checks are
``tools/notebooks.py --check``, usable on any directory of paired notebooks."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import jupytext.cli
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "tools" / "notebooks.py")
tool = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tool
_spec.loader.exec_module(tool)

NOTEBOOKS = tool.notebooks(tool.NOTEBOOKS_DIR)
COURSE = [
    "01_noisy_inverse_problem",
    "02_gd_is_a_spectral_filter",
    "03_filters_and_rank_rules",
    "04_merging_is_an_inverse_problem",
    "05_end_to_end_vit_merge",
    "06_speed_and_memory",
    "07_reproduce_the_paper",
]
ids = [p.stem for p in NOTEBOOKS]


def test_course_outline():
    assert [p.stem for p in NOTEBOOKS] == COURSE
    assert sorted(p.stem for p in tool.NOTEBOOKS_DIR.glob("[0-9]*.py")) == COURSE, "each notebook has its .py pair"


def test_pairing_is_declared():
    assert tool.pairing_problems(tool.NOTEBOOKS_DIR) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_and_script_in_sync(path):
    assert tool.sync_problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_stored_without_outputs(path):
    assert tool.stored_problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_structure(path):
    assert tool.structure_problems(path) == []


def test_setup_cell_is_one_library_call():
    for path in NOTEBOOKS:
        setup = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert setup.metadata.get("tags") == ["setup"], path.name
        assert setup.source.rstrip().endswith("DEVICE = swudi_lab.setup_notebook()"), path.name
        assert "google.colab" not in setup.source and "pio." not in setup.source, path.name


def test_check_cli_passes_on_the_course(capsys):
    assert tool.main(["--check"]) == 0
    assert "7 notebooks" in capsys.readouterr().out


# ----------------------------------------------------------- a teacher's edit, then sync -------


@pytest.fixture()
def pair(tmp_path):
    """A copy of notebook 01's pair and the pairing config, the script older than the notebook."""
    for name in ("01_noisy_inverse_problem.ipynb", "01_noisy_inverse_problem.py", "jupytext.toml"):
        shutil.copy(tool.NOTEBOOKS_DIR / name, tmp_path / name)
    return tmp_path / "01_noisy_inverse_problem.ipynb"


def _age(path: Path, seconds: float = 60):
    """Make ``path`` look older than its pair: jupytext --sync takes the inputs from the newer file."""
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def _sync(path: Path):
    jupytext.cli.jupytext(["--sync", "--quiet", str(path)])


def test_teacher_edits_the_notebook_then_syncs(pair):
    nb = nbformat.read(pair, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and i > 0)
    nb.cells[i].source += "\n\nA sentence a teacher added in JupyterLab."
    nbformat.write(nb, pair)
    _age(pair.with_suffix(".py"))
    problems = tool.sync_problems(pair)
    assert len(problems) == 1 and f"source of cell {i}" in problems[0] and "jupytext --sync" in problems[0]
    _sync(pair)
    assert tool.check(pair.parent) == []
    assert "# A sentence a teacher added in JupyterLab." in pair.with_suffix(".py").read_text()


def test_teacher_edits_the_script_then_syncs(pair):
    py = pair.with_suffix(".py")
    ids_before = [c.id for c in nbformat.read(pair, as_version=4).cells]
    py.write_text(py.read_text().replace("NOISE = 1e-3", "NOISE = 2e-3"))
    _age(pair)
    assert tool.sync_problems(pair) and "jupytext --sync" in tool.sync_problems(pair)[0]
    _sync(py)
    assert tool.check(pair.parent) == []
    nb = nbformat.read(pair, as_version=4)
    assert any("NOISE = 2e-3" in c.source for c in nb.cells)
    assert [c.id for c in nb.cells] == ids_before  # stable cell ids: reviewable notebook diffs


def test_check_reports_outputs_missing_pairs_and_structure(pair):
    nb = nbformat.read(pair, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.execution_count = 1
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="swudi_lab 0.1.0 | device: cpu\n")]
    code.source = code.source.replace("swudi_lab.setup_notebook()", '"cpu"')
    nbformat.write(nb, pair)
    problems = tool.check(pair.parent)
    assert any("stored with outputs" in p and "nbconvert --clear-output" in p for p in problems)
    assert any("setup_notebook()" in p for p in problems)
    pair.with_suffix(".py").unlink()
    assert any(".py is missing" in p for p in tool.sync_problems(pair))
    (pair.parent / "jupytext.toml").write_text('formats = "ipynb,md"\n')
    assert tool.pairing_problems(pair.parent)
