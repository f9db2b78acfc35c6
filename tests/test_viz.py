"""Figures of swudi_lab.viz: each is built on small inputs and its content is checked."""

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import swudi_lab  # noqa: F401  (import order: before timm)
from swudi_lab.spectral import exponential, landweber, swudi, tikhonov
from swudi_lab.viz import (
    PALETTE,
    TEMPLATE,
    accuracy_bar_figure,
    accuracy_curve_figure,
    adam_steps_figure,
    color,
    cost_bars_figure,
    empirical_factors_figure,
    error_curve_figure,
    filter_factors_figure,
    l_curve_figure,
    layer_ranks_figure,
    noise_amplification_figure,
    pareto_figure,
    pareto_front,
    picard_figure,
    side_by_side,
    solutions_figure,
    spectra_figure,
    task_heatmap_figure,
)
from swudi_lab.viz.style import Colors, int_ticks, kind, pretty

LAM = np.logspace(-4, 0, 20)


def names(fig):
    return [tr.name for tr in fig.data]


def P(labels):
    """Labels as the figures print them (Unicode maths, sub- and superscripts)."""
    return [pretty(x) for x in labels]


# ------------------------------------------------------------------------------ style --------


def test_one_colour_per_kind_across_names():
    assert color("exponential(t=300)") == color("exponential") == PALETTE["exponential"]
    assert color("WUDI (Adam)") == color("landweber(eta=0.1, n=3)") == PALETTE["landweber"]
    assert color("SWUDI") == color("swudi(t=1300, ratio=0.65)") == PALETTE["swudi"]
    assert color("SWUDI-A") == PALETTE["swudi_a"] != PALETTE["swudi"]
    assert color("closed form D C^+") == PALETTE["pseudoinverse"]
    assert kind("task arithmetic") == "task_arithmetic"
    assert color("some new method") == color("some new method")  # stable fallback
    assert color("some new method").startswith("#")


def test_side_by_side_keeps_traces_axes_and_markers():
    a = error_curve_figure({"gd": ([1, 10, 100], [3.0, 1.0, 2.0])}, current=10)
    b = spectra_figure({"lambda": LAM}, ranks={"K": 5})
    fig = side_by_side([a, b], title="both")
    assert len(fig.data) == len(a.data) + len(b.data)
    assert {tr.xaxis for tr in fig.data} == {"x", "x2"}
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis2.type == "log"
    assert fig.layout.xaxis.domain[1] < fig.layout.xaxis2.domain[0]
    assert [s.xref for s in fig.layout.shapes] == ["x", "x2"]
    assert fig.layout.title.text == "both"


# ---------------------------------------------------------------------- theory figures -------


def test_filter_factors_on_grid_and_rug():
    filters = [exponential(10.0), tikhonov(1e-2), landweber(0.5, 20)]
    fig = filter_factors_figure(filters, eigenvalues=LAM)
    assert fig.data[0].line.color == PALETTE["exponential"]
    assert names(fig)[:3] == P([f.label for f in filters])
    assert names(fig)[3].startswith("eigenvalues λ<sub>k</sub>")
    assert fig.layout.xaxis.type == "log"
    # filters of lambda alone: drawn on a fine grid over the spectrum (no ramp across a gap),
    # through every eigenvalue
    x = np.asarray(fig.data[1].x)
    assert x.min() == LAM.min() and x.max() == LAM.max() and np.isin(LAM, x).all() and x.size > 300
    np.testing.assert_allclose(fig.data[1].y, x / (x + 1e-2))
    # a filter that depends on the spectrum (top-K, SWUDI): at the eigenvalues, as steps
    fig = filter_factors_figure([swudi(10.0, ratio=0.5)], eigenvalues=LAM)
    np.testing.assert_allclose(fig.data[0].x, LAM)
    assert fig.data[0].line.shape == "hv"



def test_filter_factors_default_grid_dict_of_arrays_and_torch():
    fig = filter_factors_figure(swudi(5.0, ratio=0.5), n_points=50)
    assert len(fig.data) == 1 and len(fig.data[0].x) == 50
    lam = torch.logspace(-3, 0, 8)
    fig = filter_factors_figure({"mine": np.full(8, 0.5)}, lam=lam)
    np.testing.assert_allclose(fig.data[0].y, 0.5)
    with pytest.raises(ValueError, match="mine"):
        filter_factors_figure({"mine": np.ones(3)}, lam=lam)
    with pytest.raises(ValueError, match="filters"):
        filter_factors_figure([])


def test_picard_plot():
    sigma = np.logspace(0, -6, 12)
    beta = np.logspace(0, -3, 12)
    fig = picard_figure(sigma, -beta, noise_level=1e-3)
    assert names(fig)[:3] == ["σ<sub>k</sub>", "|u<sub>k</sub><sup>T</sup> b|", "|u<sub>k</sub><sup>T</sup> b| / σ<sub>k</sub>"]
    assert fig.layout.yaxis.type == "log"
    np.testing.assert_allclose(fig.data[2].y, beta / sigma)
    np.testing.assert_array_equal(fig.data[0].x, np.arange(1, 13))
    with pytest.raises(ValueError, match="beta"):
        picard_figure(sigma, beta[:3])


def test_spectra_normalized_with_rank_markers():
    lam = np.array([0.1, 4.0, 1.0, 2.9])  # mean 2
    fig = spectra_figure({"qkv": lam}, normalize=True, ranks={"participation_sqrt": 3, "ratio": 2})
    np.testing.assert_allclose(fig.data[0].y, [2.0, 1.45, 0.5, 0.05])
    assert [s.x0 for s in fig.layout.shapes] == [3, 2]
    assert names(fig)[1:] == ["participation_sqrt: K = 3", "ratio: K = 2"]  # the Ks are named in the legend
    assert fig.data[1].line.dash == fig.layout.shapes[0].line.dash
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"  # k is an integer
    assert fig.layout.yaxis.type == "log"
    fig = spectra_figure({"a": lam, "b": np.ones(8)}, fraction=True, ranks={"b": {"K": 4}})
    assert fig.data[1].x[-1] == 1.0 and fig.layout.shapes[0].x0 == 0.5
    with pytest.raises(ValueError, match="ranks"):
        spectra_figure({"a": lam}, ranks={"zzz": {"K": 1}})


def test_error_curve_marks_minimum():
    n = np.array([1, 10, 100, 1000])
    fig = error_curve_figure({"landweber": (n, [5.0, 2.0, 1.0, 3.0]), "tikhonov": (n, [4.0, 3.0, 2.5, 2.4])},
                             current=100)
    assert names(fig) == ["landweber", "min of landweber", "tikhonov", "min of tikhonov"]
    assert fig.data[1].x[0] == 100 and fig.data[1].y[0] == 1.0
    assert fig.data[3].x[0] == 1000
    assert fig.layout.xaxis.type == "log" and fig.layout.shapes[0].x0 == 100
    assert fig.layout.annotations[0].x == pytest.approx(2.0)  # annotations take log10 on log axes
    with pytest.raises(ValueError, match="landweber"):
        error_curve_figure({"landweber": (n, [1.0])})


def test_l_curve_corner_and_choices():
    r, s, p = np.logspace(-3, 0, 10), np.logspace(1, -1, 10), np.logspace(-6, 0, 10)
    fig = l_curve_figure(r, s, params=p, corner=4, chosen={"GCV": 5, "discrepancy": 7})
    assert names(fig)[0] == "L-curve"
    assert names(fig)[1].startswith("corner") and names(fig)[2].startswith("GCV")
    assert fig.data[1].x[0] == r[4] and fig.data[3].y[0] == s[7]
    assert fig.layout.xaxis.type == fig.layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="outside"):
        l_curve_figure(r, s, chosen={"GCV": 99})


def test_empirical_factors_against_fitted_exponential():
    f = {"GD": 1 - np.exp(-LAM * 30), "Adam": 1 - np.exp(-LAM * 100)}
    fig = empirical_factors_figure(LAM, f, {"GD": 30.0, "Adam": 100.0})
    assert names(fig) == P(["GD (measured)", "1 - exp(-lambda t_eff), t_eff=30", "Adam (measured)",
                            "1 - exp(-lambda t_eff), t_eff=100"])
    assert fig.data[0].marker.color != fig.data[2].marker.color
    grid = np.asarray(fig.data[1].x)
    np.testing.assert_allclose(fig.data[1].y, 1 - np.exp(-grid * 30))
    fig = empirical_factors_figure(LAM, f["GD"], 30.0)
    assert len(fig.data) == 2


def test_noise_amplification():
    coeffs = np.full(20, 1e-3)
    fig = noise_amplification_figure(LAM, coeffs, [tikhonov(1e-2)])
    order = np.argsort(LAM)[::-1]
    np.testing.assert_allclose(fig.data[0].y, 1e-3 / LAM[order])
    np.testing.assert_allclose(fig.data[1].y, 1e-3 / (LAM[order] + 1e-2))
    assert names(fig) == ["pseudoinverse (f = 1)", "tikhonov(α=0.01)"]


def test_solutions_figure():
    fig = solutions_figure(np.ones(5), {"tikhonov": np.zeros(5)}, grid=np.linspace(0, 1, 5))
    assert names(fig) == ["truth x<sub>true</sub>", "tikhonov"]
    assert fig.data[0].line.color == PALETTE["truth"]
    with pytest.raises(ValueError, match="tikhonov"):
        solutions_figure(np.ones(5), {"tikhonov": np.zeros(4)})


# --------------------------------------------------------------------- merging figures -------


def test_accuracy_bars_with_error_bars_and_references():
    fig = accuracy_bar_figure({"WUDI": [84.0, 85.0, 86.0], "SWUDI": 85.5}, base=48.0, experts=90.5)
    bar = fig.data[0]
    assert list(bar.x) == ["WUDI", "SWUDI"]
    np.testing.assert_allclose(bar.y, [85.0, 85.5])
    np.testing.assert_allclose(bar.error_y.array, [1.0, 0.0])
    assert [s.y0 for s in fig.layout.shapes] == [48.0, 90.5]
    assert list(bar.marker.color) == [PALETTE["landweber"], PALETTE["swudi"]]
    assert fig.layout.template == TEMPLATE


def test_task_heatmap():
    fig = task_heatmap_figure({"WUDI": {"mnist": 99.0, "svhn": 80.0}, "SWUDI": {"mnist": 98.0}})
    hm = fig.data[0]
    assert list(hm.x) == ["mnist", "svhn"] and list(hm.y) == ["WUDI", "SWUDI"]
    assert hm.z[0][1] == 80.0 and np.isnan(hm.z[1][1])
    assert hm.zmid is None


def test_task_heatmap_of_signed_changes_is_diverging_around_zero():
    fig = task_heatmap_figure({"tau_a": {"a": 20.0, "b": -12.0}, "tau_b": {"a": -3.0, "b": 30.0}},
                              y_title="expert added", signed=True)
    hm = fig.data[0]
    assert hm.zmid == 0.0 and "change" in hm.hovertemplate and "expert added" in hm.hovertemplate
    assert fig.layout.yaxis.title.text == "expert added"


def test_accuracy_curves_with_std_band():
    x = np.array([0.3, 1.0, 3.0])
    seeds = np.array([[80.0, 84.0, 83.0], [82.0, 86.0, 85.0]])
    fig = accuracy_curve_figure({"swudi": (x, seeds), "exponential": (x, [81.0, 83.0, 84.0])},
                                references={"closed form": 82.33}, current=1.0)
    assert names(fig) == ["swudi ± std", "swudi", "exponential"]
    np.testing.assert_allclose(fig.data[1].y, [81.0, 85.0, 84.0])
    np.testing.assert_allclose(fig.data[1].customdata, np.sqrt(2.0))
    assert fig.data[0].fill == "toself"
    assert fig.layout.shapes[0].y0 == 82.33 and fig.layout.shapes[1].x0 == 1.0
    fig = accuracy_curve_figure({"swudi": ([0.5, 0.65, 1.0], [1, 2, 3])}, log_x=False,
                                x_title="SWUDI ratio r")
    assert fig.layout.xaxis.type != "log"
    with pytest.raises(ValueError, match="swudi"):
        accuracy_curve_figure({"swudi": (x, np.ones((2, 2)))})


def test_adam_steps_with_closed_form_line():
    fig = adam_steps_figure([100, 300, 1000, 3000], [84.0, 84.6, 83.5, 82.5], 82.33, references={"SWUDI": 85.55})
    assert names(fig) == ["WUDI (Adam)"]
    assert fig.layout.xaxis.type == "log"
    assert [s.y0 for s in fig.layout.shapes] == [82.33, 85.55]


def test_layer_ranks_grouped_by_type():
    ranks = {f"blocks.{b}.{part}.weight": 10 * b + i for b in range(3)
             for i, part in enumerate(["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"])}
    fig = layer_ranks_figure(ranks, d_in=100)
    assert names(fig) == ["qkv", "proj", "fc1", "fc2"]
    np.testing.assert_allclose(fig.data[2].y, [0.02, 0.12, 0.22])  # fc1: K = 10 b + 2, over 100
    assert list(fig.data[0].x) == [0, 1, 2]
    fig = layer_ranks_figure({"blocks.0.attn.qkv.weight": 7})
    assert fig.data[0].y[0] == 7


def test_pareto_front_and_figure():
    pts = {"WUDI": (86.3, 84.6), "SWUDI": (2.8, 85.5), "closed form": (1.0, 82.3), "slow bad": (50.0, 80.0)}
    assert pareto_front([86.3, 2.8, 1.0, 50.0], [84.6, 85.5, 82.3, 80.0]) == [2, 1]
    fig = pareto_figure(pts)
    assert names(fig)[0] == "Pareto front" and names(fig)[1:] == list(pts)
    np.testing.assert_allclose(fig.data[0].x, [1.0, 2.8])
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="WUDI"):
        pareto_figure({"WUDI": (0.0, 80.0)})


def test_cost_bars():
    fig = cost_bars_figure({"WUDI": {"time": 86.3, "memory": 2000.0}, "SWUDI": {"time": 2.8, "memory": None}})
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    np.testing.assert_allclose(fig.data[0].x, [86.3, 2.8])  # horizontal bars: names read on the left
    assert list(fig.data[0].y) == ["WUDI", "SWUDI"] and fig.data[0].orientation == "h"
    assert fig.data[1].x[0] == 2000.0 and np.isnan(fig.data[1].x[1])
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="SWUDI"):
        cost_bars_figure({"SWUDI": {"memory": 1}})


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="sigma"):
        picard_figure(np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="results"):
        accuracy_bar_figure({})
    with pytest.raises(ValueError, match="lam"):
        empirical_factors_figure([np.nan, 1.0], [0.1, 0.2])


def test_published_comparison_figure_puts_the_published_bar_beside_ours():
    from swudi_lab.viz import published_comparison_figure

    fig = published_comparison_figure({"swudi": 84.0, "optmerge": 80.0}, {"swudi": 85.55})
    ours, pub = fig.data
    assert list(ours.x) == ["swudi", "optmerge"] and list(ours.y) == [84.0, 80.0]
    assert list(pub.x) == ["swudi"] and list(pub.y) == [85.55]  # no published bar where there is none
    assert fig.layout.barmode == "group"
    alone = published_comparison_figure({"swudi": 10.0})
    assert len(alone.data) == 1 and not alone.layout.showlegend
    with pytest.raises(ValueError, match="ours is empty"):
        published_comparison_figure({})


# ------------------------------------------------------------ one figure style (issue 19) -------


def _colours(fig):
    out = []
    for tr in fig.data:
        c = (getattr(tr, "line", None) and tr.line.color) or (getattr(tr, "marker", None) and tr.marker.color)
        out.append(c)
    return out


def test_palette_is_colour_blind_safe_and_distinct_within_a_figure():
    from swudi_lab.viz.style import QUALITATIVE

    okabe_ito = {"#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7"}
    assert okabe_ito <= set(QUALITATIVE) and len(set(QUALITATIVE)) == len(QUALITATIVE)
    assert PALETTE["tikhonov"] != PALETTE["wiener"] and PALETTE["gcv"] != PALETTE["l_curve"]
    assert color("GCV") != color("L-curve") != color("discrepancy")
    # notebook 3: four spectra with names outside the palette; notebook 4: many layers
    fig = spectra_figure({"merge-like": LAM, "cliff": LAM * 2, "polynomial": LAM * 3, "exponential": LAM * 4})
    assert len(set(_colours(fig))) == 4
    fig = spectra_figure({f"b{b}.{t}": LAM * (b + 1) for b in range(2) for t in ("qkv", "proj", "fc1", "fc2")})
    assert len(set(_colours(fig))) == 8
    # two curves of one kind get two colours; the same name keeps its colour
    pick = Colors()
    assert pick("exponential(t=1)") == PALETTE["exponential"] != pick("exponential(t=2)")
    assert pick("exponential(t=1)") == PALETTE["exponential"]
    fig = solutions_figure(None, {"b_exact = A x_true": np.ones(4), "b = b_exact + e": np.ones(4)})
    assert len(set(_colours(fig))) == 2 and fig.data[0].line.dash != fig.data[1].line.dash


def test_log_axes_print_powers_of_ten_and_no_bare_minor_digits():
    ax = TEMPLATE.layout.xaxis
    assert ax.exponentformat == "power" and ax.minorloglabels == "none" and ax.automargin
    assert TEMPLATE.layout.yaxis.exponentformat == "power"


def test_integer_axes_have_integer_ticks():
    ranks = {f"blocks.{b}.attn.qkv.weight": 5 for b in range(4)}
    fig = layer_ranks_figure(ranks)
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"  # never 0.5 steps
    fig = picard_figure(np.logspace(0, -3, 64), np.logspace(0, -2, 64))
    assert fig.layout.xaxis.dtick == 10 and fig.layout.xaxis.tick0 == 0
    fig = int_ticks(go.Figure(go.Scatter(x=[0, 3000], y=[1, 2])), "x")
    assert fig.layout.xaxis.dtick == 500


def test_maths_prints_as_maths():
    assert pretty("||x_f - x_true|| / ||x_true||") == "‖x<sub>f</sub> - x<sub>true</sub>‖ / ‖x<sub>true</sub>‖"
    assert pretty("lambda_k d_in / N") == "λ<sub>k</sub> d<sub>in</sub> / N"
    assert pretty("kappa = t N / d_in") == "κ = t N / d<sub>in</sub>"
    assert pretty("eta*lam_max") == "η·λ<sub>max</sub>"
    assert pretty("closed form D C^+") == "closed form D C<sup>+</sup>"
    assert pretty("theta0") == "θ<sub>0</sub>" and pretty("10^-3") == "10<sup>−3</sup>"
    for name in ("top_k", "task_arithmetic", "swudi_a (participation_sqrt)", "blocks.3.mlp.fc1"):
        assert "<sub>" not in pretty(name), name  # identifiers keep their underscores
    assert pretty(pretty("u_k^T b")) == pretty("u_k^T b") == "u<sub>k</sub><sup>T</sup> b"
    fig = filter_factors_figure([tikhonov(1e-2)])
    assert fig.layout.xaxis.title.text == "eigenvalue λ" and fig.layout.yaxis.title.text == "filter factor f(λ)"


def test_side_by_side_gives_each_panel_its_own_legend():
    a = error_curve_figure({"landweber (GD)": ([1, 10, 100], [3.0, 1.0, 2.0])})
    b = filter_factors_figure([landweber(0.5, 20), exponential(10.0)])
    fig = side_by_side([a, b], title="kappa = 3")
    legends = {tr.legend for tr in fig.data}
    assert legends == {"legend", "legend2"}
    assert [tr.legend for tr in fig.data][:2] == ["legend", "legend"]  # panel 1: curve and its minimum
    assert fig.layout.legend2.x == pytest.approx(fig.layout.xaxis2.domain[0])
    assert fig.layout.legend.y < 0 and fig.layout.margin.b > 60  # under the panels, inside the figure
    assert fig.layout.title.text == "κ = 3"


def test_labels_do_not_collide():
    fig = spectra_figure({"a": LAM, "b": LAM * 2}, ranks={"a": {"rule": 5}, "b": {"rule": 6}})
    assert not fig.layout.annotations  # the Ks are in the legend, not printed at the top
    assert names(fig)[2:] == ["rule: K = 5 (a)", "rule: K = 6 (b)"]
    assert fig.data[2].line.color == fig.data[0].line.color  # each K in its spectrum's colour
    fig = error_curve_figure({"gd": ([1, 10, 100], [3.0, 1.0, 2.0])})
    from swudi_lab.viz.style import mark_x, mark_y

    for x in (10, 11, 12):
        mark_x(fig, x, f"K = {x}")
    assert len({a.y for a in fig.layout.annotations}) == 3  # stacked, not overprinted
    for y in (1.0, 1.01):
        mark_y(fig, y, f"ref {y}")
    assert len({a.x for a in fig.layout.annotations if a.name == "mark_y"}) == 2
    pts = {"WUDI": (86.3, 84.6), "SWUDI": (2.8, 85.5), "SWUDI-A": (2.9, 85.4)}
    fig = pareto_figure(pts, x_range=(0.5, 200), y_range=(80, 90))
    assert all(tr.mode == "markers" for tr in fig.data[1:])  # names in the legend, no text on the points
    assert len({tr.marker.symbol for tr in fig.data[1:]}) == 3
    np.testing.assert_allclose(fig.layout.xaxis.range, np.log10([0.5, 200]))
    assert list(fig.layout.yaxis.range) == [80, 90]


def test_long_titles_wrap_instead_of_being_cut():
    from swudi_lab.viz.style import wrap

    long = "Normalized spectra lambda_k d_in / N and the rank SWUDI-A keeps (participation of sqrt(lambda)) on four"
    fig = spectra_figure({"a": LAM}, title=long)
    assert "<br>" in fig.layout.title.text
    assert wrap("short title") == "short title"


def test_explorer_labels_take_the_width_they_need_and_readouts_are_plain():
    import ipywidgets as widgets

    from swudi_lab.viz.widgets import fit_labels, readout

    s = widgets.FloatSlider(description="eta*lam_max")
    log = widgets.FloatLogSlider(value=1000, base=10, min=0, max=4, description="steps n", readout_format=".3g")
    row = fit_labels([s, log])
    assert s.style.description_width == "initial" and log.style.description_width == "initial"
    assert row[0] is s and not log.readout and row[1].children[1].value == "1000"
    log.value = 10 ** 0.5
    assert row[1].children[1].value == "3.16"
    assert readout(13.541666666666666) == "13.5" and readout(1000.0) == "1000" and readout(1.3e-5) == "1.3·10⁻⁵"


def test_marker_labels_near_the_right_edge_read_leftwards():
    fig = error_curve_figure({"gd": ([1, 10, 100, 1000], [3.0, 1.0, 2.0, 2.5])}, current=900)
    ann = fig.layout.annotations[0]
    assert ann.xanchor == "right"  # not cut at the figure's edge
    fig = error_curve_figure({"gd": ([1, 10, 100, 1000], [3.0, 1.0, 2.0, 2.5])}, current=2)
    assert fig.layout.annotations[0].xanchor == "left"


def test_category_names_print_their_maths_and_keep_their_data():
    fig = accuracy_bar_figure({"wudi (lr 1e-5)": 54.6, "swudi": 72.5})
    assert list(fig.data[0].x) == ["wudi (lr 1e-5)", "swudi"]
    assert list(fig.layout.xaxis.ticktext) == ["wudi (lr 10<sup>−5</sup>)", "swudi"]
    assert accuracy_bar_figure({"swudi": 72.5}).layout.xaxis.ticktext is None
