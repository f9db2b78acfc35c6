"""The course notebooks, seen in a real browser.

Each notebook is executed (nbclient, current environment), exported to HTML with its
plotly figures embedded (plotly.js inline, no CDN), and opened in headless Chromium:
every figure must render (a plotly plot with an SVG and marks) and a screenshot of the
notebook's hero figure must not be blank. See ``tools/notebook_browser_check.py``.

Chromium missing: skipped with a message, except under ``CI`` (or ``SWUDI_LAB_REQUIRE_BROWSER``)
or on a machine with root and apt-get, where ``make setup`` installs it, so it must run.
``SWUDI_LAB_SAVE_SCREENSHOTS=1`` refreshes ``docs/img/<notebook>.png`` for the README.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("notebook_browser_check", ROOT / "tools" / "notebook_browser_check.py")
check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = check  # dataclasses look their module up in sys.modules
_spec.loader.exec_module(check)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.fixture(scope="module")
def chromium():
    binary = check.find_chromium()
    if binary is None:
        required, why = check.browser_required()
        if required:
            pytest.fail(f"{check.missing_browser_message()} It is required here ({why}).")
        pytest.skip(check.missing_browser_message())
    return binary


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_renders_in_browser(path, chromium, tmp_path):
    save = os.environ.get("SWUDI_LAB_SAVE_SCREENSHOTS", "") not in ("", "0")
    html_dir = os.environ.get("SWUDI_LAB_HTML_DIR")
    res = check.check_notebook(path, chromium, tmp_path, save_screenshot=save,
                               html_dir=Path(html_dir) if html_dir else None)
    print(f"{res.name}: {res.seconds:.1f} s, {res.figures} figures, screenshot std {res.screenshot_std:.1f}")
    assert res.ok, f"{res.name}: " + "; ".join(res.problems)
