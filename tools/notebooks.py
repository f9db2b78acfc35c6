"""Check the course notebooks: each ``<name>.ipynb`` with its jupytext percent script ``<name>.py``.

The notebooks are edited as notebooks. Each ``notebooks/<name>.ipynb`` is paired with
``notebooks/<name>.py`` (jupytext's percent format, the reviewable source; the pairing is declared
in ``notebooks/jupytext.toml``). JupyterLab with jupytext saves both; after editing one file by
hand, ``jupytext --sync notebooks/*.ipynb`` updates the other (the file edited last wins).

This script (and ``tests/test_notebooks_source.py``, which calls it) checks, without executing
anything, that in a directory of notebooks:

* the pairing ``ipynb,py:percent`` is declared (a ``jupytext.toml`` there or above);
* each ``.ipynb`` and its ``.py`` hold the same cells (type, source, tags), read with jupytext;
* each ``.ipynb`` is stored without outputs and execution counts;
* each notebook has the course's structure: a Colab badge first, one setup cell calling
  ``swudi_lab.setup_notebook()`` as its first code cell, an explorer, asserts, one ``hero`` cell.

Usage::

    .venv/bin/python tools/notebooks.py --check              # notebooks/
    .venv/bin/python tools/notebooks.py --check path/to/dir  # any directory of paired notebooks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file
from jupytext.formats import long_form_multiple_formats

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
PAIRING = "ipynb,py:percent"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
SETUP_CALL = "swudi_lab.setup_notebook()"


def notebooks(directory: Path) -> list[Path]:
    """The course notebooks of ``directory``: ``[0-9]*.ipynb``, in order."""
    return sorted(Path(directory).glob("[0-9]*.ipynb"))


def _sync_hint(path: Path) -> str:
    return f"run `jupytext --sync {path.with_suffix('.ipynb')}` (the file edited last wins)"


def pairing_problems(directory: Path) -> list[str]:
    """Problems with the declared pairing: a jupytext config in ``directory`` (or above) must pair
    its notebooks as ``ipynb,py:percent``."""
    config_file = find_jupytext_configuration_file(str(directory))
    if config_file is None:
        return [f"no jupytext configuration in {directory} or above: add a jupytext.toml with "
                f'formats = "{PAIRING}"']
    config = load_jupytext_configuration_file(config_file)
    probe = str(Path(directory) / "00_probe.ipynb")
    formats = config.default_formats(probe)
    wanted = long_form_multiple_formats(PAIRING)
    if not formats or long_form_multiple_formats(formats) != wanted:
        return [f"{config_file} pairs notebooks as {formats!r}, not {PAIRING!r}"]
    return []


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, list(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def sync_problems(ipynb: Path) -> list[str]:
    """Problems with the pair ``ipynb`` / ``ipynb.with_suffix('.py')``: both must exist, the script must
    be in percent format, and both must hold the same cells (type, source, tags)."""
    ipynb, py = Path(ipynb), Path(ipynb).with_suffix(".py")
    if not py.exists():
        return [f"{py.name} is missing: {_sync_hint(ipynb)}"]
    nb, text = jupytext.read(ipynb), jupytext.read(py)
    fmt = text.metadata.get("jupytext", {}).get("text_representation", {}).get("format_name")
    if fmt != "percent":
        return [f"{py.name} is not a jupytext percent script (header says format {fmt!r}): "
                f"run `jupytext --update --to py:percent {ipynb}`"]
    a, b = _cells(nb), _cells(text)
    for i, (ca, cb) in enumerate(zip(a, b)):
        for field, va, vb in zip(("cell type", "source", "tags"), ca, cb):
            if va != vb:
                return [f"{ipynb.name} and {py.name} differ in the {field} of cell {i} (a {ca[0]} cell "
                        f"in {ipynb.name}): " + _sync_hint(ipynb)]
    if len(a) != len(b):
        return [f"{ipynb.name} has {len(a)} cells, {py.name} has {len(b)}: " + _sync_hint(ipynb)]
    return []


def stored_problems(ipynb: Path) -> list[str]:
    """Problems with how ``ipynb`` is stored: a valid notebook, no outputs, no execution counts."""
    nb = nbformat.read(ipynb, as_version=4)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        return [f"{ipynb.name} is not a valid notebook: {exc.message}"]
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    if dirty:
        return [f"{ipynb.name} is stored with outputs or execution counts (cells {dirty}): run "
                f"`jupyter nbconvert --clear-output --inplace {ipynb}` (or Edit > Clear Outputs of All Cells, then save)"]
    return []


def structure_problems(ipynb: Path) -> list[str]:
    """Problems with the course's structure of ``ipynb`` (see the module docstring)."""
    nb = nbformat.read(ipynb, as_version=4)
    name, problems = Path(ipynb).name, []
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    if not markdown or BADGE not in markdown[0] or f"/blob/main/notebooks/{name})" not in markdown[0]:
        problems.append(f"{name}: the first markdown cell must hold the Colab badge linking to /blob/main/notebooks/{name}")
    if not code or SETUP_CALL not in code[0]:
        problems.append(f"{name}: the first code cell must be the setup cell calling {SETUP_CALL}")
    text = "\n".join(code)
    if "explore" not in text:
        problems.append(f"{name}: no explorer (`explore`) in any code cell")
    if "assert " not in text:
        problems.append(f"{name}: no `assert` checks the numbers that matter")
    if "import timm" in text and text.find("import swudi_lab") > text.find("import timm"):
        problems.append(f"{name}: `import swudi_lab` must come before `import timm` (torchvision shim)")
    tags = [t for c in nb.cells for t in c.get("metadata", {}).get("tags", [])]
    if tags.count("hero") != 1:
        problems.append(f"{name}: {tags.count('hero')} cells tagged 'hero'; exactly one gives the README picture")
    return problems


def check(directory: Path = NOTEBOOKS_DIR) -> list[str]:
    """Every problem of the paired notebooks in ``directory`` (empty: all good)."""
    directory = Path(directory)
    paths = notebooks(directory)
    if not paths:
        return [f"no notebooks ([0-9]*.ipynb) in {directory}"]
    problems = pairing_problems(directory)
    for path in paths:
        problems += sync_problems(path) + stored_problems(path) + structure_problems(path)
    for py in sorted(directory.glob("[0-9]*.py")):
        if not py.with_suffix(".ipynb").exists():
            problems.append(f"{py.name} has no {py.with_suffix('.ipynb').name}: run `jupytext --sync {py}`")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", required=True,
                    help="check the paired notebooks (nothing is executed or written)")
    ap.add_argument("directory", nargs="?", type=Path, default=NOTEBOOKS_DIR,
                    help="directory of paired notebooks (default: notebooks/)")
    args = ap.parse_args(argv)
    problems = check(args.directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{len(notebooks(args.directory))} notebooks in {args.directory}: paired, in sync, stored without outputs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
