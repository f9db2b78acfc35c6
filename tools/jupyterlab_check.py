"""Run the course notebooks as a student meets them: in a live JupyterLab, in headless Chromium.

One JupyterLab server (127.0.0.1 only, a free port, a random token, ``--no-browser``,
``--allow-root`` when root) serves a temporary copy of ``notebooks/``, so no output is ever saved
into the repository; it is killed at the end. Chromium is Debian's ``chromium`` (or
``$SWUDI_LAB_CHROMIUM``), driven by the playwright Python package through ``executable_path``:
no browser is downloaded. For each notebook, one after the other in that server:

1. open it in JupyterLab (a fresh workspace), run *Run All Cells* (the ``notebook:run-all-cells``
   command of the exposed ``jupyterapp``) and wait until every cell ran and the kernel is idle;
   the wall time must stay within ``$SWUDI_LAB_NOTEBOOK_BUDGET_S`` (default 120 s; enforced under
   ``CI`` or when the variable is set, else a warning: other jobs on a shared CPU slow a notebook);
2. no error output: no cell output of type ``error`` and no exception printed by an explorer;
3. every plotly figure is drawn (``.js-plotly-plot`` with a ``.main-svg``, marks, a size) and every
   explorer is a live ipywidget (the widget view rendered, with controls and a drawn figure);
4. each explorer's first control is moved (a slider: one arrow-key press on its handle; a dropdown:
   the next option), and its figure must change (its plotly data and layout compared before and
   after);
5. a screenshot of the notebook's hero figure (the first figure of the cell tagged ``hero``, without
   the text the cell printed), which must not be blank;
   with ``--save-screenshots`` (``SWUDI_LAB_SAVE_SCREENSHOTS=1`` under pytest) it is cropped and
   written to ``docs/img/<notebook>.png``: the README's pictures are these screenshots.

The kernel runs the explorers in their default JupyterLab mode (ipywidgets); the environment
variable ``SWUDI_LAB_WIDGETS`` is removed from the server's environment.

Usage::

    python tools/jupyterlab_check.py [notebooks/NN_name.ipynb ...] [--save-screenshots]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
IMG_DIR = ROOT / "docs" / "img"

NOTEBOOK_BUDGET_S = float(os.environ.get("SWUDI_LAB_NOTEBOOK_BUDGET_S", "120"))
# Over the budget is a failure under CI or with the budget set explicitly; on a shared machine
# (other jobs make a notebook slower) it is a warning in the summary.
ENFORCE_BUDGET = bool(os.environ.get("CI") or os.environ.get("SWUDI_LAB_NOTEBOOK_BUDGET_S"))
RUN_TIMEOUT_S = 300          # hard limit of one notebook's run-all
SERVER_TIMEOUT_S = 120       # JupyterLab start
REDRAW_TIMEOUT_S = 60        # an explorer's redraw after a control moved
VIEWPORT = dict(width=1280, height=900)

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
EXPLORER = ".jp-Notebook .jp-OutputArea-output > .jupyter-widgets"  # a widget view at the top of an output

# Lab settings for the check: every cell stays in the DOM (no windowing), nothing is saved on its
# own, no news pop-up.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


@dataclass
class NotebookResult:
    name: str
    seconds: float = 0.0
    figures: int = 0
    explorers: int = 0
    moved: list = field(default_factory=list)
    screenshot: Path | None = None
    screenshot_std: float = 0.0
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        status = "ok" if self.ok else "FAIL: " + "; ".join(self.problems)
        if self.warnings:
            status += " (warning: " + "; ".join(self.warnings) + ")"
        return (f"{self.name:36s} {self.seconds:6.1f} s  {self.figures:2d} figures  {self.explorers} explorers "
                f"(moved: {', '.join(self.moved) or '-'})  {status}")


# ------------------------------------------------------------------------------------------
# What is needed, and whether it must be there
# ------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """Path of a Chromium binary (``$SWUDI_LAB_CHROMIUM``, else chromium / chromium-browser on PATH)."""
    env = os.environ.get("SWUDI_LAB_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def missing() -> str | None:
    """Why the check cannot run here (``None``: it can)."""
    why = []
    if find_chromium() is None:
        why.append("no Chromium (looked for chromium, chromium-browser, google-chrome, $SWUDI_LAB_CHROMIUM; "
                   "`make browser` installs Debian's chromium as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why.append("the playwright Python package is not installed (`pip install -c constraints.txt playwright`; "
                   "no `playwright install` needed, the system's Chromium is used)")
    return "; ".join(why) or None


def required() -> str | None:
    """Why the check must run here (``None``: it may skip): under CI, or when Chromium is installed."""
    if os.environ.get("CI"):
        return "CI is set"
    if os.environ.get("SWUDI_LAB_REQUIRE_BROWSER"):
        return "SWUDI_LAB_REQUIRE_BROWSER is set"
    if find_chromium() is not None:
        return f"Chromium is installed ({find_chromium()})"
    return None


# ------------------------------------------------------------------------------------------
# JupyterLab
# ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server on 127.0.0.1 in a temporary copy of the notebooks folder."""

    def __init__(self, tmp: Path, notebooks_dir: Path = NOTEBOOKS):
        self.tmp = Path(tmp)
        self.root = self.tmp / "notebooks"
        shutil.copytree(notebooks_dir, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log = self.tmp / "jupyterlab.log"

    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("SWUDI_LAB_WIDGETS", None)  # the explorers' JupyterLab default: ipywidgets
        settings = self.tmp / "lab-settings"
        for rel, value in LAB_SETTINGS.items():
            p = settings / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(value))
        env.update(JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(self.tmp / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"), JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
                   OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
        root = str(ROOT)  # the kernel imports swudi_lab from this checkout
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start(self) -> "LabServer":
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=", "--ServerApp.terminals_enabled=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self._env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {SERVER_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its kernels (one session)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------------------------------
# In the page
# ------------------------------------------------------------------------------------------

JS_READY = """(name) => {
  const app = window.jupyterapp; if (!app) return false;
  const w = app.shell.currentWidget;
  return !!(w && w.context && w.context.path.endsWith(name) && w.sessionContext && w.sessionContext.session
            && w.sessionContext.session.kernel && w.sessionContext.session.kernel.connectionStatus === 'connected'
            && w.content && w.content.widgets.length > 0);
}"""

JS_RUN_ALL = """() => {
  const app = window.jupyterapp; window.__swudiRun = null;
  app.commands.execute('notebook:run-all-cells').then(
    ok => { window.__swudiRun = {done: true, ok: ok}; },
    err => { window.__swudiRun = {done: true, ok: false, error: String(err)}; });
}"""

JS_DONE = """() => {
  const r = window.__swudiRun; if (!r || !r.done) return false;
  const w = window.jupyterapp.shell.currentWidget, k = w.sessionContext.session.kernel;
  const busy = Array.from(document.querySelectorAll('.jp-Notebook .jp-InputPrompt'))
    .some(p => p.textContent.includes('*'));
  return k.status === 'idle' && !busy ? r : false;
}"""

JS_MODEL = "() => window.jupyterapp.shell.currentWidget.content.model.toJSON()"

JS_PLOTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .js-plotly-plot')).map(gd => {
  const r = gd.getBoundingClientRect();
  return {svg: gd.querySelectorAll('.main-svg').length,
          marks: gd.querySelectorAll('.main-svg path, .main-svg rect, .main-svg text').length,
          width: Math.round(r.width), height: Math.round(r.height),
          in_widget: !!gd.closest('.widget-output')};
})"""

JS_EXPLORER_ERRORS = """() => Array.from(document.querySelectorAll('.jp-Notebook .widget-output'))
  .map(o => o.innerText).filter(t => /\\b\\w*(Error|Exception): /.test(t))"""

# The plotly figure of explorer i: its data and the layout parts a control changes, as a string.
JS_SIGNATURE = """(i) => {
  const root = document.querySelectorAll('%s')[i];
  const gd = root && root.querySelector('.widget-output .js-plotly-plot');
  if (!gd || !gd.querySelector('.main-svg') || !gd.data) return null;
  const l = gd.layout || {};
  return JSON.stringify([gd.data, l.shapes, l.annotations, l.title, l.xaxis && l.xaxis.range, l.yaxis && l.yaxis.range]);
}""" % EXPLORER

HIDE_CHROME_CSS = """
  .jp-OutputPrompt, .jp-InputPrompt, .modebar-container, .jp-Collapser { display: none !important; }
"""


def _wait(page, js: str, arg=None, timeout_s: float = 30.0):
    return page.wait_for_function(js, arg=arg, timeout=timeout_s * 1000, polling=250).json_value()


def _settle(page, quiet_s: float = 1.5, timeout_s: float = 30.0) -> None:
    """Wait until the number of drawn plotly plots stops changing (widgets and figures render late)."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        n = page.evaluate("() => document.querySelectorAll('.jp-Notebook .js-plotly-plot .main-svg').length")
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.25)


def _outputs(model: dict):
    for i, cell in enumerate(model.get("cells", [])):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            yield i, cell, out


def move_first_control(page, i: int) -> str:
    """Move explorer i's first control (slider: an arrow key on its handle; dropdown: the next option).

    Returns what was done, e.g. ``"slider 'ratio r' ->"``.
    """
    root = page.locator(EXPLORER).nth(i)
    control = root.locator(".noUi-handle, select").first
    control.scroll_into_view_if_needed()
    box = control.locator("xpath=ancestor::div[contains(@class,'widget-inline-hbox')][1]")
    label = box.locator(".widget-label").first.inner_text().strip() if box.count() else "?"
    tag = control.evaluate("el => el.tagName.toLowerCase()")
    if tag == "select":
        n = control.locator("option").count()
        j = (control.evaluate("el => el.selectedIndex") + 1) % max(n, 1)
        control.select_option(index=j)
        return f"dropdown {label!r} -> option {j}"
    now, top = (control.get_attribute(a) for a in ("aria-valuenow", "aria-valuemax"))
    key = "ArrowLeft" if now is not None and top is not None and float(now) >= float(top) else "ArrowRight"
    control.focus()
    control.press(key)
    return f"slider {label!r} {key.replace('Arrow', '').lower()}"


def check_notebook(page, server: LabServer, path: Path, work: Path, *, save_screenshot: bool = False
                   ) -> NotebookResult:
    """Open, run all, check and screenshot one notebook in the live JupyterLab."""
    path = Path(path)
    res = NotebookResult(path.stem)
    page.goto(f"{server.url}/lab/workspaces/{path.stem}/tree/{path.name}?reset&token={server.token}")
    _wait(page, JS_READY, path.name, timeout_s=90)

    start = time.perf_counter()
    page.evaluate(JS_RUN_ALL)
    try:
        run = _wait(page, JS_DONE, timeout_s=RUN_TIMEOUT_S)
    except Exception:
        res.seconds = time.perf_counter() - start
        res.problems.append(f"run-all did not finish within {RUN_TIMEOUT_S} s")
        return res
    res.seconds = time.perf_counter() - start
    if res.seconds > NOTEBOOK_BUDGET_S:
        over = f"ran {res.seconds:.0f} s, over the {NOTEBOOK_BUDGET_S:.0f} s budget"
        if ENFORCE_BUDGET:
            res.problems.append(over)
        else:
            res.warnings.append(f"{over}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    _settle(page)

    model = page.evaluate(JS_MODEL)
    for i, cell, out in _outputs(model):
        if out.get("output_type") == "error":
            res.problems.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    if not run.get("ok") and not any("cell" in p for p in res.problems):
        res.problems.append(f"run-all reported failure ({run.get('error', 'a cell did not run')})")
    res.problems += [f"explorer printed an error: {t.strip()[:200]}" for t in page.evaluate(JS_EXPLORER_ERRORS)]

    # Figures and explorers, as the kernel sent them and as the page drew them.
    res.figures = sum(PLOTLY_MIME in out.get("data", {}) for _, _, out in _outputs(model))
    res.explorers = sum(WIDGET_MIME in out.get("data", {}) for _, _, out in _outputs(model))
    plots = page.evaluate(JS_PLOTS)
    drawn = [p for p in plots if p["svg"] > 0 and p["marks"] >= 10 and p["width"] > 50 and p["height"] > 50]
    if len(drawn) != len(plots):
        res.problems.append(f"{len(plots) - len(drawn)} of {len(plots)} plotly plots are not drawn")
    if sum(not p["in_widget"] for p in plots) != res.figures:
        res.problems.append(f"{res.figures} figures in the outputs, {sum(not p['in_widget'] for p in plots)} "
                            "plotly plots in the page")
    if res.figures + res.explorers == 0:
        res.problems.append("no figure and no explorer")
    views = page.locator(EXPLORER)
    if views.count() != res.explorers:
        res.problems.append(f"{res.explorers} explorers in the outputs, {views.count()} widget views in the page")
    for i in range(views.count()):
        before = page.evaluate(JS_SIGNATURE, i)
        live = views.nth(i).locator(".noUi-handle, select").count()
        if before is None or live == 0:
            res.problems.append(f"explorer {i + 1} is not a live widget with a drawn figure "
                                f"({views.nth(i).inner_text()[:120]!r})")
            continue
        try:
            res.moved.append(move_first_control(page, i))
            page.wait_for_function(f"(b) => {{ const s = ({JS_SIGNATURE})({i}); return s !== null && s !== b; }}",
                                   arg=before, timeout=REDRAW_TIMEOUT_S * 1000, polling=250)
        except Exception as exc:
            res.problems.append(f"explorer {i + 1}: its figure did not change after moving its first control "
                                f"({type(exc).__name__})")
    res.problems += [f"explorer printed an error: {t.strip()[:200]}" for t in page.evaluate(JS_EXPLORER_ERRORS)]
    _settle(page, quiet_s=1.0)

    # The hero screenshot.
    hero = next((i for i, c in enumerate(model["cells"]) if "hero" in c.get("metadata", {}).get("tags", [])), None)
    cells = page.locator(".jp-Notebook .jp-Cell")
    if hero is None:  # else the first cell with a figure
        hero = next((i for i, _, out in _outputs(model) if PLOTLY_MIME in out.get("data", {})
                     or WIDGET_MIME in out.get("data", {})), None)
    if hero is not None:
        page.add_style_tag(content=HIDE_CHROME_CSS)
        # the hero cell's (first) figure or explorer, without the text it printed above
        figs = cells.nth(hero).locator(".jp-OutputArea-child:has(.js-plotly-plot)")
        area = figs.first if figs.count() else cells.nth(hero).locator(".jp-Cell-outputArea").first
        area.scroll_into_view_if_needed()
        page.mouse.move(0, 0)  # no hover label in the picture
        time.sleep(0.5)
        png = work / f"{path.stem}.png"
        area.screenshot(path=str(png))
        res.screenshot = png
        res.screenshot_std, colours = image_spread(png)
        if res.screenshot_std < 8 or colours < 16:
            res.problems.append(f"screenshot looks blank (pixel std {res.screenshot_std:.1f}, {colours} colours)")
        elif save_screenshot and not res.problems:
            res.screenshot = save_readme_picture(png, IMG_DIR / f"{path.stem}.png")
    else:
        res.problems.append("no cell to take a screenshot of")

    debug = os.environ.get("SWUDI_LAB_DEBUG_DIR")
    if debug:  # every figure and explorer as drawn, and the page if something went wrong
        Path(debug).mkdir(parents=True, exist_ok=True)
        outs = page.locator(".jp-Notebook .jp-OutputArea-output:has(.js-plotly-plot), "
                            ".jp-Notebook .jp-OutputArea-output.js-plotly-plot")
        for j in range(outs.count()):
            outs.nth(j).screenshot(path=str(Path(debug) / f"{path.stem}-{j + 1:02d}.png"))
        if res.problems:
            (Path(debug) / f"{path.stem}.html").write_text(page.content(), encoding="utf-8")
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    return res


# ------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------


def image_spread(png: Path) -> tuple[float, int]:
    """(mean per-channel standard deviation, number of distinct colours) of a PNG."""
    from PIL import Image, ImageStat

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        std = sum(ImageStat.Stat(rgb).stddev) / 3
        colours = len(rgb.getcolors(maxcolors=1 << 20) or [])
    return std, colours


def save_readme_picture(png: Path, dest: Path, max_width: int = 1000, max_bytes: int = 250_000) -> Path:
    """Crop white margins, shrink, and save a small PNG for the README."""
    from PIL import Image, ImageChops

    with Image.open(png) as im:
        rgb = im.convert("RGB")
    bbox = ImageChops.difference(rgb, Image.new("RGB", rgb.size, (255, 255, 255))).getbbox()
    if bbox:
        pad = 8
        rgb = rgb.crop((max(bbox[0] - pad, 0), max(bbox[1] - pad, 0), min(bbox[2] + pad, rgb.width),
                        min(bbox[3] + pad, rgb.height)))
    if rgb.width > max_width:
        rgb = rgb.resize((max_width, round(rgb.height * max_width / rgb.width)), Image.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for colours in (256, 128, 64):
        rgb.quantize(colors=colours, method=Image.MEDIANCUT).save(dest, optimize=True)
        if dest.stat().st_size <= max_bytes:
            break
    return dest


# ------------------------------------------------------------------------------------------
# A session: one server, one browser
# ------------------------------------------------------------------------------------------


class LabSession:
    """JupyterLab + headless Chromium for a series of notebooks (a context manager)."""

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.server = LabServer(self.tmp)

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        self.server.start()
        try:
            self._pw = sync_playwright().start()
            self.browser = self._pw.chromium.launch(
                executable_path=find_chromium(), headless=True,
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"])
        except Exception:
            self.server.stop()
            raise
        return self

    def check(self, path: Path, *, save_screenshot: bool = False) -> NotebookResult:
        page = self.browser.new_page(viewport=VIEWPORT)
        try:
            return check_notebook(page, self.server, path, self.tmp, save_screenshot=save_screenshot)
        finally:
            page.close()

    def __exit__(self, *exc):
        try:
            self.browser.close()
            self._pw.stop()
        finally:
            self.server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--save-screenshots", action="store_true", help="write docs/img/<notebook>.png")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    why = missing()
    if why:
        print(f"the live JupyterLab check cannot run: {why}", file=sys.stderr)
        return 1 if required() else 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="swudi-lab-") as tmp, LabSession(Path(tmp)) as lab:
        for p in paths:
            res = lab.check(p, save_screenshot=args.save_screenshots)
            print(res.summary(), flush=True)
            failed += not res.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
