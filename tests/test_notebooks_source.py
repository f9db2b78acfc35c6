"""The course notebooks as files: generated from tools/build_notebooks.py, stored without
outputs, Colab-ready, each with an explorer and checked numbers. (Fast: nothing is executed;
nbval and tests/test_notebooks_browser.py run them.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
COURSE = [
    "01_noisy_inverse_problem",
    "02_gd_is_a_spectral_filter",
    "03_filters_and_rank_rules",
    "04_merging_is_an_inverse_problem",
    "05_end_to_end_vit_merge",
    "06_speed_and_memory",
]


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_course_outline():
    assert [p.stem for p in NOTEBOOKS] == COURSE


def test_notebooks_match_their_source():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_notebooks.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_file(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} is stored with outputs"
    first = nb.cells[0].source
    assert "colab.research.google.com/assets/colab-badge.svg" in first
    assert f"/blob/main/notebooks/{path.name})" in first
    code = _code(nb)
    assert '"google.colab" in sys.modules' in code[0] and "pip" in code[0], "first code cell installs in Colab"
    assert "import swudi_lab" in code[1] and 'torch.cuda.is_available()' in code[1]
    text = "\n".join(code)
    assert "explore" in text, "each notebook has an explorer"
    assert "assert " in text, "each notebook checks the numbers that matter"
    assert text.find("import swudi_lab") < text.find("import timm") or "import timm" not in text
    tags = [t for c in nb.cells for t in c.get("metadata", {}).get("tags", [])]
    assert tags.count("hero") == 1, "one cell tagged 'hero' gives the README picture"
