"""Explorers of swudi_lab.viz.widgets, driven programmatically in all three modes."""

import math
import subprocess
import sys

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import pytest

import swudi_lab  # import order: before timm
from swudi_lab.spectral import exponential, filtered_solve, landweber, tikhonov, top_k
from swudi_lab.spectral.rank_rules import RANK_RULES, choose_rank
from swudi_lab.viz import (
    Explorer,
    cutoff_filter,
    default_grid,
    explore,
    filters_explorer,
    gd_explorer,
    in_colab,
    inverse_problem_explorer,
    merge_explorer,
    resolve_mode,
    setup_notebook,
)
from swudi_lab.viz import explorers as ex
from swudi_lab.viz.widgets import ENV_VAR

LAM = np.logspace(-3, 0, 16)  # mean != 1, so kappa and t differ


def line_figure(a, kind):
    """A tiny make_figure: y = a * x (kind 'line') or a * x^2."""
    x = np.arange(4.0)
    fig = go.Figure(go.Scatter(x=x, y=a * (x if kind == "line" else x**2), name=f"{kind} a={a}"))
    if kind == "square":
        fig.add_trace(go.Scatter(x=x, y=x, name="extra"))
    return fig.update_layout(title=f"a={a}")


def controls():
    return {"a": widgets.FloatSlider(value=1.0, min=0.0, max=2.0), "kind": widgets.Dropdown(options=["line", "square"])}


# ------------------------------------------------------------------ the generic helper -------


def not_in_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_NOTEBOOK_ID", raising=False)


def test_in_colab(monkeypatch):
    not_in_colab(monkeypatch)
    assert not in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert in_colab()
    not_in_colab(monkeypatch)
    monkeypatch.setenv("COLAB_NOTEBOOK_ID", "1a2b")  # VS Code's Colab kernels: no google.colab module
    assert in_colab()


def test_resolve_mode(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    not_in_colab(monkeypatch)
    assert resolve_mode() == "widgets"
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert resolve_mode() == "plotly-sliders"
    monkeypatch.setenv(ENV_VAR, "static")
    assert resolve_mode() == "static"
    assert resolve_mode("widgets") == "widgets"
    with pytest.raises(ValueError, match="mode"):
        resolve_mode("matplotlib")
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_mode()


def test_explore_static_returns_current_figure():
    fig = explore(line_figure, {**controls(), "a": 1.5}, mode="static")
    np.testing.assert_allclose(fig.data[0].y, [0, 1.5, 3.0, 4.5])


def test_explore_widgets_redraws_on_change():
    c = controls()
    exp = explore(line_figure, c, mode="widgets")
    assert isinstance(exp, Explorer) and isinstance(exp, widgets.VBox)
    assert exp.output in exp.children
    np.testing.assert_allclose(exp.figure.data[0].y, [0, 1, 2, 3])
    c["a"].value = 2.0
    np.testing.assert_allclose(exp.figure.data[0].y, [0, 2, 4, 6])
    c["kind"].value = "square"
    assert len(exp.figure.data) == 2 and exp.values == {"a": 2.0, "kind": "square"}

    def failing(a):
        if a > 1:
            raise ValueError("too big")
        return line_figure(a, "line")

    s = widgets.FloatSlider(value=0.5, min=0, max=2)
    exp = explore(failing, {"a": s}, mode="widgets")
    s.value = 1.5
    assert isinstance(exp.error, ValueError) and exp.figure.data[0].y[1] == 0.5  # last good figure kept


def test_explore_plotly_sliders_precomputes_frames():
    c = controls()
    c["a"].value = 2.0
    fig = explore(line_figure, c, mode="plotly-sliders", fallback_grid={"a": [0.5, 2.0], "kind": ["line", "square"]})
    assert [f.name for f in fig.frames] == ["a=0.5, kind=line", "a=0.5, kind=square", "a=2, kind=line",
                                            "a=2, kind=square"]
    slider = fig.layout.sliders[0]
    assert len(slider.steps) == 4 and list(slider.steps[slider.active].args[0]) == ["a=2, kind=line"]
    np.testing.assert_allclose(fig.data[0].y, [0, 2, 4, 6])  # the active frame is shown first
    assert len(fig.data) == 2  # padded to the largest frame so every frame animates every trace
    np.testing.assert_allclose(fig.frames[1].data[0].y, [0, 0.5, 2, 4.5])
    assert fig.frames[1].layout.title.text == "a=0.5"
    lo, hi = fig.frames[3].layout.yaxis.range  # explicit: Plotly.animate does not autorange
    assert lo <= 0 and hi >= 18.0
    one = explore(line_figure, c, mode="plotly-sliders", fallback_grid={"a": [1.0, 2.0]})
    assert one.layout.sliders[0].currentvalue.prefix == "a = " and [s.label for s in one.layout.sliders[0].steps] == ["1", "2"]


def test_setup_notebook(monkeypatch, capsys):
    import plotly.io as pio
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.delenv(ENV_VAR, raising=False)
    not_in_colab(monkeypatch)
    old = pio.renderers.default
    try:
        assert setup_notebook() == device and pio.renderers.default == "plotly_mimetype+notebook"
        assert capsys.readouterr().out == f"swudi_lab {swudi_lab.__version__} | device: {device} | explorers: widgets\n"
        assert setup_notebook("json") == device and pio.renderers.default == "json"
        monkeypatch.setenv("COLAB_NOTEBOOK_ID", "1a2b")
        setup_notebook()
        assert pio.renderers.default == "colab" and capsys.readouterr().out.endswith("explorers: plotly-sliders\n")
        monkeypatch.setenv(ENV_VAR, "bogus")
        with pytest.raises(ValueError, match=ENV_VAR):
            setup_notebook()
    finally:
        pio.renderers.default = old
    assert swudi_lab.setup_notebook is setup_notebook  # the notebooks call it as swudi_lab.setup_notebook()


def test_import_swudi_lab_stays_light():
    code = ("import sys, swudi_lab; heavy = [m for m in ('plotly', 'ipywidgets', 'swudi_lab.viz') if m in sys.modules]; "
            "assert not heavy, heavy; swudi_lab.setup_notebook; assert 'plotly' in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_explore_default_grid_and_errors():
    assert default_grid(widgets.Dropdown(options=[("one", 1), ("two", 2)])) == [1, 2]
    assert default_grid(widgets.Checkbox(value=True)) == [False, True]
    g = default_grid(widgets.FloatLogSlider(value=10.0, base=10, min=-1, max=3), n=5)
    np.testing.assert_allclose(g, [0.1, 1, 10, 100, 1000])
    assert default_grid(widgets.IntSlider(value=3, min=0, max=10), n=3) == [0, 3, 5, 10]
    fig = explore(line_figure, controls(), mode="plotly-sliders", max_frames=10)
    assert 2 <= len(fig.frames) <= 10
    with pytest.raises(ValueError, match="fallback_grid"):
        explore(line_figure, controls(), mode="plotly-sliders", fallback_grid={"zzz": [1]})
    with pytest.raises(ValueError, match="max_frames"):
        explore(line_figure, controls(), mode="plotly-sliders", fallback_grid={"a": list(range(40))}, max_frames=10)
    with pytest.raises(ValueError, match="controls"):
        explore(line_figure, {}, mode="static")


# ------------------------------------------------------------------ ready-made explorers -----


def small_problem(n=12):
    s = np.linspace(0, 1, n)
    A = np.exp(-((s[:, None] - s[None, :]) ** 2) / 0.02) / n
    x = np.sin(np.pi * s)
    return A, x


def test_cutoff_filter_places_the_transition():
    assert cutoff_filter("tikhonov", 0.1, LAM)(np.array([0.1]))[0] == pytest.approx(0.5)
    assert cutoff_filter("exponential", 0.1, LAM).params["t"] == pytest.approx(10.0)
    assert cutoff_filter("top_k", 0.1, LAM).params["k"] == int((LAM >= 0.1).sum())
    with pytest.raises(ValueError, match="name"):
        cutoff_filter("magic", 0.1, LAM)


def test_inverse_problem_explorer_all_modes():
    A, x = small_problem()
    b_noisy = ex._noisy(A @ x, 1e-2, 0)

    def expected(lambda_c):
        return filtered_solve(A, b_noisy, tikhonov(lambda_c)).numpy()

    exp = inverse_problem_explorer(A, x_true=x, noise=1e-2, filter="tikhonov", lambda_c=1e-3, mode="widgets")
    assert exp.figure.data[0].name == "truth x<sub>true</sub>"  # legends print maths (viz.style.pretty)
    np.testing.assert_allclose(exp.figure.data[1].y, expected(1e-3), rtol=1e-6, atol=1e-9)
    exp.controls["lambda_c"].value = 1e-2
    np.testing.assert_allclose(exp.figure.data[1].y, expected(1e-2), rtol=1e-6, atol=1e-9)
    assert exp.figure.data[1].name == "tikhonov(α=0.01)"
    exp.controls["filter"].value = "exponential"
    assert exp.figure.data[1].name == "exponential(t=100)"

    static = inverse_problem_explorer(A, x_true=x, noise=1e-2, lambda_c=1e-2, mode="static")
    np.testing.assert_allclose(static.data[1].y, expected(1e-2), rtol=1e-6, atol=1e-9)
    sl = inverse_problem_explorer(A, x_true=x, mode="plotly-sliders",
                                  fallback_grid={"noise": [1e-2], "lambda_c": [1e-3, 1e-2]})
    assert len(sl.frames) == 2
    np.testing.assert_allclose(sl.frames[1].data[1].y, expected(1e-2), rtol=1e-6, atol=1e-9)


def test_inverse_problem_explorer_uses_the_toy_lab():
    fig = inverse_problem_explorer(problem="shaw", n=16, mode="static")
    assert len(fig.data[0].y) == 16 and "relative error" in fig.layout.title.text
    with pytest.raises(ValueError, match="x_true"):
        inverse_problem_explorer(np.eye(3), mode="static")


def test_gd_explorer_all_modes():
    A, x = small_problem()
    lam = np.linalg.svd(A, compute_uv=False) ** 2
    lmax = lam.max()

    def factors(eta_lmax, n):
        return landweber(eta_lmax / lmax, n)(np.sort(lam))

    exp = gd_explorer(A, x_true=x, eta_lmax=1.0, steps=10, max_steps=1000, mode="widgets")
    np.testing.assert_allclose(exp.figure.data[0].y, factors(1.0, 10))
    exp.controls["steps"].value = 100
    np.testing.assert_allclose(exp.figure.data[0].y, factors(1.0, 100))
    np.testing.assert_allclose(exp.figure.data[1].y, exponential(100 / lmax)(np.sort(lam)))
    assert any(s.x0 == 100 for s in exp.figure.layout.shapes)  # current n on the error curve
    assert any(n.startswith("min of landweber") for n in [tr.name for tr in exp.figure.data])

    static = gd_explorer(A, x_true=x, eta_lmax=1.5, steps=30, max_steps=1000, mode="static")
    np.testing.assert_allclose(static.data[0].y, factors(1.5, 30))
    sl = gd_explorer(A, x_true=x, max_steps=1000, mode="plotly-sliders",
                     fallback_grid={"eta_lmax": [1.0], "steps": [1, 10, 100]})
    assert [f.name for f in sl.frames] == ["steps=1", "steps=10", "steps=100"]
    np.testing.assert_allclose(sl.frames[2].data[0].y, factors(1.0, 100))


def test_filters_explorer_all_modes():
    mean = LAM.mean()
    asc = np.sort(LAM)
    exp = filters_explorer(LAM, kappa=1.0, ratio=0.5, mode="widgets")
    x = np.asarray(exp.figure.data[0].x)
    assert x.size > 10 * LAM.size and set(asc) <= set(x)  # a dense grid through the eigenvalues
    np.testing.assert_allclose(exp.figure.data[0].y, exponential(1.0 / mean)(x))
    exp.controls["kappa"].value = 10.0
    np.testing.assert_allclose(exp.figure.data[0].y, exponential(10.0 / mean)(x))
    assert exp.figure.data[1].name == "top_k(k=8)"  # ceil(0.5 * 16)
    on_eig = np.isin(x, asc)
    np.testing.assert_allclose(np.asarray(exp.figure.data[1].y)[on_eig], top_k(k=8)(asc))
    exp.controls["rule"].value = "participation_sqrt"
    K = choose_rank(LAM, "participation_sqrt")
    assert exp.figure.data[1].name == f"top_k(k={K})"
    assert sorted(s.x0 for s in exp.figure.layout.shapes) == sorted([8, K])
    swudi_before = np.asarray(exp.figure.data[2].y)
    exp.controls["ratio"].value = 0.25  # the ratio moves SWUDI's curve, whatever the rule
    assert "k=4" in exp.figure.data[2].name  # ceil(0.25 * 16)
    assert not np.allclose(np.asarray(exp.figure.data[2].y), swudi_before)
    assert exp.figure.data[1].name == f"top_k(k={K})"
    assert "wudi_risk_scalefree" not in exp.controls["rule"].options  # needs rhs_energy
    assert "gavish_donoho_authors" not in exp.controls["rule"].options  # needs d_out
    with_rhs = filters_explorer(LAM, rhs_energy=LAM, mode="widgets").controls["rule"].options
    assert "wudi_risk_scalefree" in with_rhs and "wudi_risk" not in with_rhs  # the authors' also needs start_energy
    full = filters_explorer(LAM, rhs_energy=LAM, start_energy=LAM, n_rows=32, d_out=4, mode="widgets")
    assert set(RANK_RULES) <= set(full.controls["rule"].options)
    full.controls["rule"].value = "wudi_risk"
    K = choose_rank(LAM, "wudi_risk", rhs_energy=LAM, start_energy=LAM)
    assert full.figure.data[1].name == f"top_k(k={K})"

    static = filters_explorer(LAM, kappa=3.0, rule="stable_rank", mode="static")
    assert static.data[1].name == f"top_k(k={choose_rank(LAM, 'stable_rank')})"
    sl = filters_explorer(LAM, mode="plotly-sliders", fallback_grid={"kappa": [1.0, 10.0]})
    assert [f.name for f in sl.frames] == ["kappa=1", "kappa=10"]
    np.testing.assert_allclose(sl.frames[1].data[0].y, exponential(10.0 / mean)(np.asarray(sl.frames[1].data[0].x)))
    custom = filters_explorer(LAM, rule="half", rules={"half": lambda lam: len(lam) // 2}, mode="static")
    assert custom.data[1].name == "top_k(k=8)"


def test_merge_explorer_callable_and_table():
    def acc(kappa, ratio):
        return {"mnist": 90 + kappa * ratio, "svhn": 70 + kappa}

    kappas, ratios = [1.0, 3.0, 10.0], [0.5, 1.0]
    exp = merge_explorer(acc, kappas=kappas, ratios=ratios, references={"closed form": 82.33}, mode="widgets")
    exp.controls["ratio"].value = 0.5
    left = exp.figure.data[0]
    assert left.name == "task average"
    np.testing.assert_allclose(left.y, [(90 + k * 0.5 + 70 + k) / 2 for k in kappas])
    exp.controls["x"].value = 10.0
    right = [tr for tr in exp.figure.data if tr.name == "task average" and tr.xaxis == "x2"][0]
    np.testing.assert_allclose(right.x, ratios)
    np.testing.assert_allclose(right.y, [(90 + 10 * r + 80) / 2 for r in ratios])

    rows = [{"t": k, "ratio": r, "average": k + r} for k in kappas for r in ratios]
    static = merge_explorer(rows, x_name="t", per_task=False, mode="static")
    assert len([tr for tr in static.data if tr.name == "task average"]) == 2
    np.testing.assert_allclose(static.data[0].y, [k + 1.0 for k in kappas])  # default ratio = the largest
    sl = merge_explorer(rows, x_name="t", mode="plotly-sliders")
    assert len(sl.frames) == 6
    with pytest.raises(ValueError, match="kappas"):
        merge_explorer(acc, mode="static")
    with pytest.raises(ValueError, match="row 0"):
        merge_explorer([{"ratio": 1.0, "a": 1.0}], mode="static")
    assert math.isclose(ex._average({"a": 1.0, "b": 3.0}), 2.0)
