"""Run the course notebooks and look at them in a real (headless) browser.

For each notebook this script

1. executes it top to bottom with nbclient, in the current Python environment (a kernel
   per notebook, a timeout per cell), and records the wall time;
2. exports it to HTML with nbconvert (lab template) -- plotly figures are embedded as
   ``text/html`` with plotly.js *inline*, so the page draws offline, no CDN;
3. opens the page in headless Chromium twice:
   ``--dump-dom`` with an injected probe that reports every plotly plot (has it a
   ``.main-svg``, how many marks, what size), and ``--screenshot`` of the notebook's
   *hero* figure (the output of the cell tagged ``hero``; else the first figure);
4. checks: every figure in the notebook rendered (rendered plots == figures in the
   outputs, each with an SVG, marks and a non-zero size) and the screenshot is not blank
   (pixel spread with Pillow).

With ``--save-screenshots`` (or ``SWUDI_LAB_SAVE_SCREENSHOTS=1`` under pytest) the cropped
screenshot goes to ``docs/img/<notebook>.png`` for the README.

Chromium: Debian's ``chromium`` (``apt-get install -y chromium``), or any of
``chromium-browser``/``google-chrome``/``chrome`` on PATH, or ``SWUDI_LAB_CHROMIUM=/path``.
When none is found the check is skipped with a message -- except under ``CI`` or where the
setup could have installed it (root with apt-get), where a missing browser is an error.

Usage::

    python tools/notebook_browser_check.py [notebooks/*.ipynb] [--save-screenshots]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
IMG_DIR = ROOT / "docs" / "img"

CELL_TIMEOUT_S = 120  # per cell; the notebook budget is checked separately
NOTEBOOK_BUDGET_S = float(os.environ.get("SWUDI_LAB_NOTEBOOK_BUDGET_S", "120"))
CHROMIUM_TIMEOUT_S = 120
VIRTUAL_TIME_MS = 15000
WINDOW = (1100, 760)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
]

PLOTLY_MIME = "application/vnd.plotly.v1+json"

# Injected before </body>: after load, report every plotly plot as a data attribute (read back
# through --dump-dom).
PROBE = """
<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var plots = Array.prototype.slice.call(document.querySelectorAll(".js-plotly-plot"));
    var report = plots.map(function (gd) {
      var r = gd.getBoundingClientRect();
      return {
        svg: gd.querySelectorAll(".main-svg").length,
        marks: gd.querySelectorAll(".main-svg path, .main-svg rect, .main-svg text, .main-svg image").length,
        traces: gd._fullData ? gd._fullData.length : 0,
        width: Math.round(r.width), height: Math.round(r.height),
        cell: (gd.closest(".jp-Cell") || {}).id || ""
      };
    });
    var el = document.createElement("div");
    el.id = "swudi-browser-report";
    el.setAttribute("data-report", JSON.stringify(report));
    document.body.appendChild(el);
  }, 2000);
});
</script>
"""

# Screenshot mode: show only the hero cell's output, at the top of the page.
HERO_CSS = """
<style>
  body, .jp-Notebook { padding: 0 !important; margin: 0 !important; background: #fff !important; }
  .jp-Cell { display: none !important; }
  .jp-Cell.swudi-hero { display: block !important; }
  .jp-Cell.swudi-hero .jp-Cell-inputWrapper, .jp-Cell.swudi-hero .jp-OutputPrompt,
  .jp-Cell.swudi-hero .jp-Collapser, .modebar-container { display: none !important; }
  .jp-Cell.swudi-hero .jp-OutputArea-child:not(:has(.js-plotly-plot, .plotly-graph-div)) { display: none !important; }
</style>
"""


@dataclass
class NotebookResult:
    name: str
    seconds: float = 0.0
    figures: int = 0
    report: list = field(default_factory=list)
    screenshot: Path | None = None
    screenshot_std: float = 0.0
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------------------------------
# Chromium
# ------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    env = os.environ.get("SWUDI_LAB_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_required() -> tuple[bool, str]:
    """Whether a missing browser is an error (CI, or a machine whose setup can install it)."""
    if os.environ.get("CI"):
        return True, "CI is set"
    if os.environ.get("SWUDI_LAB_REQUIRE_BROWSER"):
        return True, "SWUDI_LAB_REQUIRE_BROWSER is set"
    can_apt = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None
    if can_apt:
        return True, "this machine has root and apt-get, so `make setup` installs Debian's chromium"
    return False, ""


def missing_browser_message() -> str:
    return (
        "headless Chromium not found (looked for chromium, chromium-browser, google-chrome, "
        "$SWUDI_LAB_CHROMIUM): the in-browser notebook check is skipped. Install it with "
        "`apt-get install -y chromium` (Debian/Ubuntu) to run it."
    )


def _chromium(binary: str, args: list[str], user_dir: Path) -> subprocess.CompletedProcess:
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)


# ------------------------------------------------------------------------------------------
# Execute and export
# ------------------------------------------------------------------------------------------


def _current_env_kernel(tmp: Path):
    """A KernelManager whose kernel is this interpreter (like nbval's --nbval-current-env)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp / "kernels" / "swudi-lab-current"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "swudi_lab (current env)",
        "language": "python",
    }))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp / "kernels")])
    return KernelManager(kernel_name="swudi-lab-current", kernel_spec_manager=ksm)


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(path: Path, tmp: Path, widgets_mode: str = "plotly-sliders"):
    """Execute a notebook in its own directory; returns (executed notebook, seconds).

    The kernel runs with ``SWUDI_LAB_WIDGETS=widgets_mode``: by default the explorers render as
    plain plotly figures with plotly's own sliders (the Colab pattern), so the browser sees them
    and checks that path too. nbval runs the same notebooks in the default ipywidgets mode.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, km=_current_env_kernel(tmp), timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    with _environ(SWUDI_LAB_WIDGETS=widgets_mode):
        client.execute()
    return nb, time.perf_counter() - start


def _is_figure(output) -> bool:
    data = output.get("data", {})
    if PLOTLY_MIME in data:
        return True
    html = data.get("text/html", "")
    html = "".join(html) if isinstance(html, list) else html
    return "Plotly.newPlot" in html


def figure_cells(nb) -> list[tuple[str, int]]:
    """(cell id, number of plotly figures) for every cell with plotly output."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        n = sum(_is_figure(o) for o in cell.get("outputs", []))
        if n:
            out.append((cell.get("id", ""), n))
    return out


def hero_cell_id(nb) -> str | None:
    """The cell tagged ``hero`` (else the first cell with a figure)."""
    figs = figure_cells(nb)
    for cell in nb.cells:
        if "hero" in cell.get("metadata", {}).get("tags", []) and any(c == cell.get("id") for c, _ in figs):
            return cell.get("id")
    return figs[0][0] if figs else None


def to_html(nb) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb)
    return body


def _inject(html: str, snippet: str) -> str:
    i = html.rfind("</body>")
    return html[:i] + snippet + html[i:] if i >= 0 else html + snippet


def hero_page(html: str, cell_id: str) -> str:
    """The exported page restyled to show only the hero cell's figure output."""
    marker = f'id="cell-id={cell_id}"'
    i = html.find(marker)
    if i < 0:
        return html
    start = html.rfind("<div", 0, i)
    tag_end = html.find(">", i)
    tag = html[start:tag_end]
    tag = re.sub(r'class="', 'class="swudi-hero ', tag, count=1)
    html = html[:start] + tag + html[tag_end:]
    return html.replace("</head>", HERO_CSS + "</head>", 1)


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------


def dom_report(binary: str, page: Path, tmp: Path) -> list[dict]:
    proc = _chromium(binary, [f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom", page.as_uri()],
                     tmp / "chromium-dom")
    m = re.search(r'id="swudi-browser-report" data-report="([^"]*)"', proc.stdout)
    if not m:
        raise RuntimeError(
            f"no report from Chromium for {page.name} (rc={proc.returncode}); stderr tail:\n"
            + "\n".join(proc.stderr.splitlines()[-8:])
        )
    import html as htmllib

    return json.loads(htmllib.unescape(m.group(1)))


def screenshot(binary: str, page: Path, png: Path, tmp: Path) -> None:
    proc = _chromium(binary, [f"--virtual-time-budget={VIRTUAL_TIME_MS}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                              f"--screenshot={png}", page.as_uri()], tmp / "chromium-shot")
    if not png.exists():
        raise RuntimeError(f"Chromium wrote no screenshot for {page.name} (rc={proc.returncode})")


def image_spread(png: Path) -> tuple[float, int]:
    """(mean per-channel standard deviation, number of distinct colours) of a PNG."""
    from PIL import Image, ImageStat

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        std = sum(ImageStat.Stat(rgb).stddev) / 3
        colours = len(rgb.getcolors(maxcolors=1 << 20) or [])
    return std, colours


def save_readme_picture(png: Path, dest: Path, max_width: int = 900, max_bytes: int = 200_000) -> Path:
    """Crop white margins, shrink, and save a small PNG for the README."""
    from PIL import Image, ImageChops

    with Image.open(png) as im:
        rgb = im.convert("RGB")
    bg = Image.new("RGB", rgb.size, (255, 255, 255))
    bbox = ImageChops.difference(rgb, bg).getbbox()
    if bbox:
        pad = 8
        bbox = (max(bbox[0] - pad, 0), max(bbox[1] - pad, 0), min(bbox[2] + pad, rgb.width), min(bbox[3] + pad, rgb.height))
        rgb = rgb.crop(bbox)
    if rgb.width > max_width:
        rgb = rgb.resize((max_width, round(rgb.height * max_width / rgb.width)), Image.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for colours in (256, 128, 64):
        rgb.quantize(colors=colours, method=Image.MEDIANCUT).save(dest, optimize=True)
        if dest.stat().st_size <= max_bytes:
            break
    return dest


def check_notebook(path: Path, binary: str, tmp: Path, *, save_screenshot: bool = False,
                   html_dir: Path | None = None) -> NotebookResult:
    """Execute, export, open in Chromium and check one notebook."""
    path = Path(path)
    res = NotebookResult(path.stem)
    work = tmp / path.stem
    work.mkdir(parents=True, exist_ok=True)
    nb, res.seconds = execute(path, work)
    if res.seconds > NOTEBOOK_BUDGET_S:
        res.problems.append(f"ran {res.seconds:.0f} s, over the {NOTEBOOK_BUDGET_S:.0f} s budget")
    figs = figure_cells(nb)
    res.figures = sum(n for _, n in figs)
    if res.figures == 0:
        res.problems.append("no plotly figure in the outputs")
        return res

    html = to_html(nb)
    page = work / f"{path.stem}.html"
    page.write_text(_inject(html, PROBE), encoding="utf-8")
    if html_dir is not None:
        html_dir.mkdir(parents=True, exist_ok=True)
        (html_dir / page.name).write_text(html, encoding="utf-8")

    res.report = dom_report(binary, page, work)
    drawn = [p for p in res.report if p["svg"] > 0 and p["marks"] >= 10 and p["width"] > 50 and p["height"] > 50]
    if len(res.report) != res.figures:
        res.problems.append(f"{res.figures} figures in the notebook but {len(res.report)} plotly plots in the page")
    if len(drawn) != res.figures:
        bad = [p for p in res.report if p not in drawn]
        res.problems.append(f"only {len(drawn)}/{res.figures} figures drew (not drawn: {bad})")

    hero = hero_cell_id(nb)
    shot_page = work / f"{path.stem}-hero.html"
    shot_page.write_text(hero_page(html, hero), encoding="utf-8")
    png = work / f"{path.stem}.png"
    screenshot(binary, shot_page, png, work)
    res.screenshot = png
    res.screenshot_std, colours = image_spread(png)
    if res.screenshot_std < 8 or colours < 16:
        res.problems.append(f"screenshot looks blank (pixel std {res.screenshot_std:.1f}, {colours} colours)")
    if save_screenshot and not res.problems:
        res.screenshot = save_readme_picture(png, IMG_DIR / f"{path.stem}.png")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--save-screenshots", action="store_true", help="write docs/img/<notebook>.png")
    ap.add_argument("--html-dir", type=Path, help="also keep the exported HTML pages here")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    binary = find_chromium()
    if binary is None:
        required, why = browser_required()
        print(missing_browser_message(), file=sys.stderr)
        return 1 if required else 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="swudi-nb-") as tmp:
        for p in paths:
            res = check_notebook(p, binary, Path(tmp), save_screenshot=args.save_screenshots, html_dir=args.html_dir)
            status = "ok" if res.ok else "FAIL: " + "; ".join(res.problems)
            print(f"{res.name:40s} {res.seconds:6.1f} s  {res.figures:2d} figures  "
                  f"screenshot std {res.screenshot_std:5.1f}  {status}")
            failed += not res.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
