"""The import layers hold: pyproject.toml's ``[tool.importlinter]`` contract, checked by import-linter.

Bottom to top: ``config | files | torchvision_compat`` <- ``spectral`` <- ``toy | merge`` <-
``evaluate`` <- ``zoo`` <- ``viz`` <- ``cli : demo : report_html``. import-linter (grimp) reads
every import statement, function-local ones included; the second test proves the check bites by
breaking a copy of the package.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``swudi_lab`` package and ``pyproject.toml`` under ``tree`` (no cache written)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-c", LINT, "--config", str(tree / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_import_layers():
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("module, upward, message", [
    ("evaluate.py", "from .zoo.model import make_backbone", "swudi_lab.evaluate is not allowed to import swudi_lab.zoo"),
    ("merge/io.py", "import swudi_lab.toy.problems", "swudi_lab.merge is not allowed to import swudi_lab.toy"),
    ("files.py", "from swudi_lab.config import paths", "swudi_lab.files is not allowed to import swudi_lab.config"),
])
def test_a_function_local_upward_import_breaks_the_contract(tmp_path, module, upward, message):
    """An import inside a function, from above (or from an independent sibling), is reported with its line."""
    shutil.copytree(ROOT / "swudi_lab", tmp_path / "swudi_lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "swudi_lab" / module
    source = target.read_text()
    line = source.count("\n") + 4
    target.write_text(source + f"\n\ndef _upward():\n    {upward}  # noqa: F401\n")
    run = _lint_imports(tmp_path)
    assert run.returncode != 0 and "1 broken" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
    assert message in run.stdout and f"(l.{line})" in run.stdout, run.stdout[-3000:]
