"""Generate the course notebooks ``notebooks/*.ipynb`` from the Python source in this file.

The notebooks are the product's front door; this script is their reviewable source. Edit the
cells here, then run::

    .venv/bin/python tools/build_notebooks.py          # writes notebooks/*.ipynb (no outputs)
    .venv/bin/python tools/build_notebooks.py --check  # fails if a notebook is out of date

Every notebook starts with the same two cells: a Colab install cell (a no-op outside Colab)
and a setup cell (plotly renderer, device). Cells tagged ``hero`` provide the README picture
(``tools/notebook_browser_check.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "notebooks"
REPO = "swudi-lab/swudi_lab"  # placeholder GitHub org/repo for the Colab badge and the install cell
COLAB = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{{name}}.ipynb"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, *tags: str):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def header(name: str, title: str, blurb: str):
    return md(f"""
# {title}

[![Open In Colab]({BADGE})]({COLAB.format(name=name)})

{blurb.strip()}
""")


INSTALL = code(f'''
# Colab only: fetch swudi_lab (code + the shipped offline zoo under data/) and install it.
# Locally (JupyterLab, nbval, the browser test) this cell does nothing.
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    REPO_DIR = "/content/swudi_lab"
    if not os.path.isdir(REPO_DIR):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/{REPO}", REPO_DIR], check=True)
    # --no-deps: keep Colab's own torch, numpy, plotly, ipywidgets, jupyter; add what it lacks.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", REPO_DIR], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "timm", "safetensors"], check=True)
    sys.path.insert(0, REPO_DIR)  # the running kernel does not see a fresh editable install otherwise
''', "setup")

SETUP = code('''
import swudi_lab  # must come before any timm import (torchvision compatibility shim)
import numpy as np
import plotly.io as pio
import torch

from swudi_lab import viz

# Plotly: JupyterLab draws the plotly mime type; exported HTML (and nbviewer) use the
# inline "notebook" HTML (plotly.js embedded once, no CDN); Colab has its own renderer.
pio.renderers.default = "colab" if IN_COLAB else "plotly_mimetype+notebook"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
print(f"swudi_lab {swudi_lab.__version__} | torch {torch.__version__} | device: {DEVICE} | "
      f"explorers: {viz.resolve_mode()}")
''', "setup")

EXPLORER_NOTE = """
**How the explorer works.** `viz.explore` picks one pattern per environment (printed by the setup
cell as *explorers: ...*):

* **JupyterLab / Jupyter / VS Code** (`"widgets"`): ipywidgets controls above an `Output`; every
  change builds a fresh plotly figure and shows it with `display(fig)`. No `FigureWidget` is
  involved, so it needs nothing but ipywidgets.
* **Colab** (`"plotly-sliders"`): Colab is unreliable with `FigureWidget` and with plotly inside an
  ipywidgets `Output`, so the figure is precomputed on a grid of control values and shown as one
  plain plotly figure with plotly's own slider. It also works in exported HTML, without a kernel.

Force a pattern with the environment variable `SWUDI_LAB_WIDGETS=widgets|plotly-sliders|static`
(the in-browser test uses `plotly-sliders`, so the Colab path is checked in a real browser too).
"""


# =============================================================================================
# 01 A noisy linear inverse problem
# =============================================================================================

NB01 = [
    header("01_noisy_inverse_problem", "1 · A noisy linear inverse problem", """
Model merging will turn out to be a *noisy linear inverse problem*. This first notebook is about
such problems on their own, with a classic test problem whose true solution we know:

* what makes a problem **ill-posed**: singular values that decay to zero;
* the **Picard plot**: when data are fit to be inverted, and where noise takes over;
* why the **pseudoinverse blows up** on noisy data;
* **filter factors** `f(lambda)`: one number per direction that decides how much of it to trust,
  and how every classic regularizer is one choice of `f`.

Everything runs on the CPU in a few seconds.
"""),
    INSTALL,
    SETUP,
    md("""
## The problem: `A x = b` with noisy `b`

`shaw` (from Hansen's *Regularization Tools*) is a 1-D image-restoration problem: a smooth kernel
`A` (64 × 64) blurs an unknown signal `x_true`; we observe `b = A x_true + e` with white noise `e`
of relative size `||e|| / ||b|| = 10^-3`. The tools: `swudi_lab.toy.make_problem` (test problems
with known solutions) and `swudi_lab.toy.white_noise`.
"""),
    code('''
from swudi_lab import spectral as S
from swudi_lab import toy

torch.set_num_threads(1)  # toy problems are tiny: one thread is fastest (and immune to a busy CPU)
NOISE = 1e-3  # relative noise level ||e|| / ||b_exact||
problem = toy.make_problem("shaw", n=64)
data = toy.white_noise(problem.b_exact, NOISE, seed=0)  # b = b_exact + e
A, b, x_true = problem.A, data.b, problem.x_true

dec = S.svd(A)  # A = U diag(sigma) V^T, sigma descending
sigma, lam = dec.sigma, dec.sigma**2  # lambda = sigma^2: eigenvalues of the normal operator A^T A
print(f"{problem.name}: A is {tuple(A.shape)}, sigma_1 = {sigma[0]:.3g}, sigma_n = {sigma[-1]:.3g}, "
      f"condition number {sigma[0] / sigma[-1]:.2e}")
print(f"noise: ||e|| = {data.noise_norm:.3g}  (||b_exact|| = {problem.b_exact.norm():.3g})")
'''),
    code('''
viz.side_by_side([
    viz.solutions_figure(x_true, {}, grid=problem.grid, title="the unknown x_true"),
    viz.solutions_figure(None, {"b_exact = A x_true": problem.b_exact, "b = b_exact + e (observed)": b},
                         grid=problem.grid, title="the data b"),
], title="shaw: a smooth kernel blurs x_true; we see b, with 0.1% noise")
'''),
    md("""
## The pseudoinverse blows up

The least-squares solution `x = A^+ b` expands `b` in the singular vectors:

`x = sum_k (u_k^T b / sigma_k) v_k`,  and with `b = b_exact + e`:  `u_k^T b / sigma_k = v_k^T x_true + u_k^T e / sigma_k`.

The noise coefficients `u_k^T e` do not decay (white noise has the same size in every direction),
but they are divided by `sigma_k`, which falls to `1e-17` here. The last directions carry noise
multiplied by `10^14` or more.
"""),
    code('''
x_pinv = S.filtered_solve(A, b, S.pseudoinverse(), decomposition=dec)
rel = lambda x: float((x - x_true).norm() / x_true.norm())  # relative error ||x - x_true|| / ||x_true||
err_pinv = rel(x_pinv)
print(f"pseudoinverse: relative error {err_pinv:.3g}, max |x| = {x_pinv.abs().max():.3g} "
      f"(the truth has max |x| = {x_true.abs().max():.3g})")
viz.side_by_side([
    viz.solutions_figure(x_true, {"pseudoinverse A^+ b": x_pinv}, grid=problem.grid,
                         title="pseudoinverse vs truth (the truth is the flat line!)"),
    viz.solutions_figure(x_true, {}, grid=problem.grid, title="the truth on its own scale"),
], title=f"The pseudoinverse of noisy data: relative error {err_pinv:.2g}")
'''),
    md("""
## The Picard plot: where data end and noise begins

The discrete **Picard condition** asks that the coefficients `|u_k^T b|` decay faster than the
`sigma_k`, so that the ratios `|u_k^T b| / sigma_k` (the coefficients of the pseudoinverse) stay
bounded. For exact data they do. With noise, `|u_k^T b|` levels off at the noise level
(`std(e)`, dashed) and the ratios explode: those directions hold noise, not signal, and a good
solver must *not* invert them. `swudi_lab.toy.picard` computes the three curves.
"""),
    code('''
pic = toy.picard(A, b, decomposition=dec)
k_noise = int((pic.coef > 3 * data.std).sum())  # directions whose coefficient stands above the noise
print(f"{k_noise} of {len(sigma)} coefficients |u_k^T b| stand above 3x the noise level {data.std:.2g}")
viz.picard_figure(pic.sigma, pic.coef, noise_level=data.std,
                  title=f"Picard plot of shaw with 0.1% noise: beyond k ~ {k_noise} the ratio explodes")
''', "hero"),
    md("""
## Filter factors: how much of each direction to trust

Every classic regularizer is the same formula with a different **filter factor** `f_k = f(lambda_k)`
on `lambda_k = sigma_k^2`:

`x_f = sum_k f(sigma_k^2) (u_k^T b / sigma_k) v_k`   (`swudi_lab.spectral.filtered_solve`)

| filter | `f(lambda)` |
|---|---|
| pseudoinverse | `1` |
| Tikhonov | `lambda / (lambda + alpha)` |
| exponential (gradient flow for time `t`) | `1 - exp(-lambda t)` |
| Landweber (`n` gradient steps of size `eta`) | `1 - (1 - eta lambda)^n` |
| top-K (truncated SVD) | `1` on the `K` largest `lambda`, else `0` |

`f = 1` trusts a direction fully; `f = 0` drops it. The filters differ in how sharply they switch
from 1 to 0. Below, each filter's parameter is the best one on a grid in hindsight (the *oracle*,
`swudi_lab.spectral.choice.oracle`, which knows `x_true`); notebook 3 chooses it from the data.
"""),
    code('''
from swudi_lab.spectral import choice

s1 = float(lam[0])
families = {  # family: parameter -> Filter, and a grid of parameters (relative to lambda_1 = sigma_1^2)
    "tikhonov": (S.tikhonov, s1 * np.logspace(-16, 0, 81)),
    "exponential": (S.exponential, np.logspace(0, 16, 81) / s1),
    "landweber": (lambda n: S.landweber(1 / s1, n), np.unique(np.logspace(0, 7, 71).round().astype(int))),
    "top_k": (lambda k: S.top_k(k=k), np.arange(1, 65)),
}
best = {}
for name, (family, grid) in families.items():
    c = choice.oracle(A, b, family, grid.tolist(), x_true, decomposition=dec)
    best[name] = c
    print(f"{c.filter.label:<38s} relative error {rel(c.x):.3g}")
print(f"{'pseudoinverse':<38s} relative error {err_pinv:.3g}")
'''),
    code('''
viz.filter_factors_figure({c.filter.label: c.filter for c in best.values()}, eigenvalues=lam,
                          title="Filter factors f(lambda) at their best parameters (ticks: lambda_k = sigma_k^2)")
'''),
    code('''
viz.solutions_figure(x_true, {c.filter.label: c.x for c in best.values()}, grid=problem.grid,
                     title="Filtered solutions: every filter recovers x_true; the pseudoinverse could not")
'''),
    md("""
All four filters switch off the same directions (the ones the Picard plot showed to be noise) and
all four land within about 6% of the truth; the pseudoinverse's error is `5 * 10^4` times the size of the truth.
That ratio is the number this notebook checks:
"""),
    code('''
err_best = min(rel(c.x) for c in best.values())
print(f"best filter: {err_best:.3g} vs pseudoinverse {err_pinv:.3g}  ({err_pinv / err_best:.2e}x lower error)")
assert err_best * 10 <= err_pinv, "a filter must beat the pseudoinverse by at least 10x"
assert all(rel(c.x) < 0.2 for c in best.values()), "every filter at its best parameter recovers x_true"
assert k_noise < len(sigma) // 2, "the Picard plot must show the noise floor"
'''),
    md("""
## How the error depends on the noise level

Less noise means more directions above the noise floor and a smaller error; but the pseudoinverse
stays useless until the noise is below `sigma_n`, i.e. never at floating-point precision.
"""),
    code('''
levels = np.logspace(-6, -1, 11)
curves = {"pseudoinverse": [], "tikhonov (oracle alpha)": [], "top_k (oracle K)": []}
for level in levels:
    bn = toy.white_noise(problem.b_exact, float(level), seed=0).b
    curves["pseudoinverse"].append(rel(S.filtered_solve(A, bn, S.pseudoinverse(), decomposition=dec)))
    for key, name in (("tikhonov (oracle alpha)", "tikhonov"), ("top_k (oracle K)", "top_k")):
        family, grid = families[name]
        curves[key].append(rel(choice.oracle(A, bn, family, grid.tolist(), x_true, decomposition=dec).x))
viz.error_curve_figure({k: (levels, v) for k, v in curves.items()}, x_title="relative noise level",
                       y_title="relative error", log_y=True, mark_min=False,
                       title="Error vs noise: filters degrade gracefully, the pseudoinverse does not")
'''),
    md("""
## Explore

Move the noise level, pick a filter and slide its cutoff `lambda_c` (the eigenvalue where the filter
switches from 1 to 0: `alpha = lambda_c` for Tikhonov, `t = 1 / lambda_c` for the exponential,
`K = #{lambda_k >= lambda_c}` for top-K). Watch the solution fall apart as the cutoff passes the
noise floor of the Picard plot.
""" + EXPLORER_NOTE),
    code('''
viz.inverse_problem_explorer(A=A, b=problem.b_exact, x_true=x_true, noise=NOISE, filter="tikhonov")
'''),
    md("""
**Next:** [2 · Gradient descent is a spectral filter](02_gd_is_a_spectral_filter.ipynb): the
Landweber filter above is *exactly* what `n` steps of gradient descent compute, which is why
stopping early regularizes.
"""),
]


# =============================================================================================
# 02 Gradient descent is a spectral filter
# =============================================================================================

NB02 = [
    header("02_gd_is_a_spectral_filter", "2 · Gradient descent is a spectral filter", """
WUDI merges a layer by running an optimizer for a few hundred steps on a quadratic loss. This
notebook shows what such a run computes:

* **gradient descent** for `n` steps *is* the Landweber filter `1 - (1 - eta lambda)^n`, exactly;
* **gradient flow** for time `t` *is* the exponential filter `1 - exp(-lambda t)`;
* **semiconvergence**: the error first falls, then rises back to the (noisy) closed form, so
  stopping early is a regularizer;
* **Adam** (WUDI's optimizer) is not linear, but it still acts like an exponential filter with a
  fitted *effective time* `t_eff`.
"""),
    INSTALL,
    SETUP,
    md("""
## A merge layer with a known truth

The WUDI problem of one layer (DESIGN.md §1): task vectors `tau_i` (`d_out × d_in`, `i = 1..N`),
`n_i = ||tau_i||_F^2`,

`C = sum_i tau_i^T tau_i / n_i`,  `D = sum_i tau_i tau_i^T tau_i / n_i`,  `L(theta) = tr(theta C theta^T) - 2 tr(theta D^T) + const`,

with gradient `2 (theta C - D)` and normal equation `theta C = D`. In a real model we never know
the best merged layer. `swudi_lab.toy.random_merge_proxy` builds one where we do: each task sees
inputs in a random low-rank subspace, the experts agree with a true `theta*` there, and the task
vectors we merge are noisy proxies (30% noise). Then `D q_k = lambda_k r_k + xi_k` with proxy
noise `xi_k`, and the pseudoinverse `D C^+` amplifies it by `1 / lambda_k`.
"""),
    code('''
from swudi_lab import spectral as S
from swudi_lab import toy

torch.set_num_threads(1)  # toy problems are tiny: one thread is fastest (and immune to a busy CPU)
mp = toy.random_merge_proxy(d_out=32, d_in=64, n_tasks=8, rank=4, noise=0.3, seed=0)
C, D, lam = mp.C, mp.D, mp.lam
N, d_in = mp.taus.shape[0], C.shape[0]
eig = S.eigh(C)
theta0 = S.sum_init(mp.taus)  # WUDI's start: the sum of task vectors
err_pinv = mp.error(S.spectral_estimate(C, D, theta0, S.pseudoinverse(), eig=eig))
print(f"N = {N} experts, layer {tuple(D.shape)}, trace(C) = {C.trace():.4f} (= N), "
      f"lambda in [{lam.min():.3g}, {lam.max():.3g}]")
print(f"relative error ||theta - theta*|| / ||theta*||: start (sum init) {mp.error(theta0):.3f}, "
      f"closed form D C^+ {err_pinv:.3f}")
'''),
    md("""
## Gradient descent = the Landweber filter, exactly

GD with step `eta` on `theta C = D`, `theta <- theta - eta (theta C - D)` (WUDI's gradient with
learning rate `eta / 2`), moves each eigen-direction `q_k` independently:
`(theta_n - theta_pinv) q_k = (1 - eta lambda_k)^n (theta0 - theta_pinv) q_k`. So after `n`
steps it equals the **spectral estimator** (`swudi_lab.spectral.spectral_estimate`)

`theta_f = theta0 (I - V F V^T) + D V diag(f / lambda) V^T`  with  `f(lambda) = 1 - (1 - eta lambda)^n`.

We run GD (`swudi_lab.spectral.gradient_descent`) for 3000 steps and compare every recorded
iterate with the closed-form Landweber estimate from one eigendecomposition.
"""),
    code('''
eta = 1.0 / float(lam.max())
record = np.unique(np.round(np.logspace(0, np.log10(3000), 40)).astype(int)).tolist()
gd = S.gradient_descent(C, D, theta0, eta=eta, steps=record[-1], record=[0] + record)
closed = [S.spectral_estimate(C, D, theta0, S.landweber(eta, n), eig=eig) for n in gd.steps]
gap = max(float((th - cf).abs().max()) for th, cf in zip(gd.thetas, closed))
scale = max(float(th.abs().max()) for th in gd.thetas)
print(f"max |theta_GD - theta_landweber| over {len(gd.steps)} iterates: {gap:.2e} (entries up to {scale:.2f})")
assert gap <= 1e-10 * max(scale, 1.0), "GD must equal the Landweber filter"
'''),
    md("""
## Gradient flow = the exponential filter

As `eta -> 0` with `t = eta n` fixed, `(1 - eta lambda)^n -> exp(-lambda t)`: gradient flow for
time `t` is the exponential filter. `swudi_lab.spectral.gradient_flow` integrates the flow with a
matrix exponential (no eigendecomposition), and it matches:
"""),
    code('''
times = [1.0, 30.0, 300.0]
flow = S.gradient_flow(C, D, theta0, times=times)
gap_flow = max(float((th - S.spectral_estimate(C, D, theta0, S.exponential(t), eig=eig)).abs().max())
               for t, th in zip(times, flow))
print(f"max |theta_flow(t) - theta_exponential(t)| = {gap_flow:.2e}")
assert gap_flow <= 1e-8

viz.filter_factors_figure({
    "landweber(eta=1/lambda_max, n=30)": S.landweber(eta, 30),
    "exponential(t=30 eta)": S.exponential(30 * eta),
    "landweber(eta=1.9/lambda_max, n=30)": S.landweber(1.9 * eta, 30),
    "pseudoinverse": S.pseudoinverse(),
}, eigenvalues=lam, title="GD steps and gradient flow are filters: same t = eta n, nearly the same factors")
'''),
    md("""
## Semiconvergence: stopping early regularizes

Measured against the truth `theta*`, the GD iterates first improve (large-`lambda` directions are
fitted: signal) and then get worse (small-`lambda` directions are fitted: amplified proxy noise),
converging to the closed form `D C^+`. The exponential filter at `t = eta n` traces the same curve.
That is why WUDI's 300 Adam steps beat WUDI's own closed form, and why running it much longer falls
back toward it.
"""),
    code('''
err_gd = np.array([mp.error(th) for th in gd.thetas])
steps = np.array(gd.steps)
t_grid = eta * np.logspace(0, np.log10(3000), 60)  # t = eta n for n from 1 to 3000
err_exp = np.array([mp.error(S.spectral_estimate(C, D, theta0, S.exponential(t), eig=eig)) for t in t_grid])
i_best = int(np.argmin(err_gd))
n_best = int(steps[i_best])
fig = viz.error_curve_figure({"GD (landweber), n steps": (steps[1:], err_gd[1:]),
                              "exponential filter, t / eta": (t_grid / eta, err_exp)},
                             x_title="steps n  (= t / eta for the flow)", y_title="||theta - theta*|| / ||theta*||",
                             title="Semiconvergence of GD on a noisy merge layer")
viz.style.mark_y(fig, err_pinv, "closed form D C^+", "#888")
print(f"best stopping point n = {n_best}: error {err_gd[i_best]:.3f} vs closed form {err_pinv:.3f} "
      f"(start {err_gd[0]:.3f}, after {steps[-1]} steps {err_gd[-1]:.3f})")
assert 0 < i_best < len(steps) - 1, "the semiconvergence minimum must be interior"
assert err_gd[i_best] < 0.9 * err_pinv, "early stopping must beat the closed form"
fig
''', "hero"),
    md("""
## Adam: not a filter, but it acts like one

WUDI uses Adam (lr `1e-5`, 300 steps, sum init). Adam rescales each coordinate's step, so it is not
a linear function of `D` and has no exact filter. But we can *measure* one: per eigen-direction,
fit `f_k` in `(theta - theta0) q_k = f_k (D q_k / lambda_k - theta0 q_k)`
(`swudi_lab.spectral.empirical_filter_factors`), and find the exponential filter closest to it,
`1 - exp(-lambda t_eff)` (`fit_effective_time`, with its `R^2`).

Adam moves each entry by about `lr` per step, so `lr` is only meaningful relative to the size of the
task-vector entries (here about 0.2, so we use `lr = 1e-2`; DESIGN.md "Scale"). The scale-free
version of `t_eff` is `kappa = t_eff N / d_in`.
"""),
    code('''
LRS = (3e-3, 1e-2, 3e-2)
adam, fits = {}, {}
weights = ((D @ eig.vectors) / eig.values.clamp_min(1e-8) - theta0 @ eig.vectors).pow(2).sum(0)
for lr in LRS:
    tr = S.adam_wudi(C, D, theta0, lr=lr, steps=300, record=range(0, 301, 5))
    f_emp = S.empirical_filter_factors(tr.final, theta0, D, eig)
    t_eff, r2 = S.fit_effective_time(f_emp, eig.values, weights=weights)
    adam[lr], fits[lr] = tr, (f_emp, t_eff, r2)
    print(f"Adam lr={lr:g}: error after 300 steps {mp.error(tr.final):.3f}, "
          f"t_eff = {t_eff:.3g} (kappa = {t_eff * N / d_in:.3g}), R^2 = {r2:.2f}")
'''),
    code('''
curves = {f"Adam lr={lr:g}": (np.array(tr.steps[1:]), [mp.error(th) for th in tr.thetas[1:]])
          for lr, tr in adam.items()}  # (step 0, the start, is off the log axis)
curves["GD (landweber)"] = (steps[1:], err_gd[1:])
fig = viz.error_curve_figure(curves, x_title="steps", y_title="||theta - theta*|| / ||theta*||",
                             title="Adam and GD trajectories: both semiconverge toward the closed form")
viz.style.mark_y(fig, err_pinv, "closed form", "#888")
fig
'''),
    code('''
lr = 1e-2
f_emp, t_eff, r2 = fits[lr]
f_gd = S.empirical_filter_factors(gd.thetas[i_best], theta0, D, eig)  # exact for GD: the Landweber factors
viz.empirical_factors_figure(eig.values, {f"Adam lr={lr:g}, 300 steps": f_emp, f"GD n={n_best}": f_gd},
                             t_eff={f"Adam lr={lr:g}, 300 steps": t_eff},
                             title=f"Adam's measured filter factors and the exponential filter t_eff = {t_eff:.3g} (R^2 = {r2:.2f})")
'''),
    code('''
f_check = S.empirical_filter_factors(gd.thetas[i_best], theta0, D, eig)
gap_f = float((f_check - S.landweber(eta, n_best)(eig.values)).abs().max())
print(f"GD's measured factors vs the Landweber formula: max gap {gap_f:.1e}")
assert gap_f < 1e-6
assert all(r2 > 0.5 for _, _, r2 in fits.values()), "Adam must be well described by an exponential filter"
assert fits[3e-3][1] < fits[1e-2][1] < fits[3e-2][1], "a larger learning rate means a longer effective time"
'''),
    md("""
## Explore

Gradient descent on the shaw problem of notebook 1 (`A^T A x = A^T b` from `x = 0`): slide the step
size `eta` (as `eta lambda_max`; GD diverges beyond 2) and the number of steps `n`. Left: the
Landweber factors against the exponential filter with the same `t = eta n`. Right: the error vs `n`,
with the current `n` and the best `n` marked.
""" + EXPLORER_NOTE),
    code('''
shaw = toy.make_problem("shaw", n=64)
viz.gd_explorer(A=shaw.A, b=shaw.b_exact, x_true=shaw.x_true, noise=1e-3, steps=1000)
'''),
    md("""
**Next:** [3 · Filters and rank rules](03_filters_and_rank_rules.ipynb): if the iteration is a
filter, pick the filter directly (one eigendecomposition), and choose its parameter from the data.
"""),
]


# =============================================================================================
# 03 Filters and rank rules
# =============================================================================================

NB03 = [
    header("03_filters_and_rank_rules", "3 · Filters and rank rules", """
Once the optimizer is recognized as a filter, we can choose the filter directly. This notebook
compares the families and the ways to choose their parameter without knowing the truth:

* **Tikhonov vs exponential vs top-K vs SWUDI** (`(1 - exp(-lambda t)) * topK`) on one problem;
* choosing the parameter from data: the **L-curve**, **GCV** and the **discrepancy principle**,
  against the **oracle** that knows `x_true`;
* **SWUDI-A's rank rules**: how many eigen-directions to keep, read off the spectrum alone, on
  spectra of different shapes.
"""),
    INSTALL,
    SETUP,
    md("""
## One problem, four families

The `shaw` problem of notebook 1 with 0.1% noise. `swudi_lab.toy.run_toy_demo` solves it with every
filter family and every parameter-choice rule; grids are relative to `lambda_1 = sigma_1^2`.
"""),
    code('''
from swudi_lab import spectral as S
from swudi_lab import toy
from swudi_lab.spectral import choice

torch.set_num_threads(1)  # toy problems are tiny: one thread is fastest (and immune to a busy CPU)
NOISE = 1e-3
problem = toy.make_problem("shaw", n=64)
data = toy.white_noise(problem.b_exact, NOISE, seed=0)
A, b, x_true = problem.A, data.b, problem.x_true
dec = S.svd(A)
lam = dec.sigma**2
rel = lambda x: float((x - x_true).norm() / x_true.norm())

rows = toy.run_toy_demo("shaw", n=64, noise=NOISE, seed=0)
print(toy.format_table(rows))
'''),
    code('''
import plotly.graph_objects as go

table = {}
for r in rows[1:]:
    table.setdefault(r["filter"], {})[r["rule"]] = r["error"]
rules = ["oracle", "gcv", "l_curve", "discrepancy"]
fig = go.Figure([go.Bar(name=rule, x=list(table), y=[table[f].get(rule, np.nan) for f in table],
                        marker_color=viz.color(rule)) for rule in rules])
fig.update_layout(template=viz.TEMPLATE, barmode="group", yaxis_type="log",
                  title=f"Relative error by filter and parameter rule (pseudoinverse: {rows[0]['error']:.2g})",
                  yaxis_title="||x - x_true|| / ||x_true||")
fig
'''),
    md("""
At their best parameters the families are within a few percent of each other: on a problem with a
clear noise floor, *where* a filter cuts matters far more than *how* it cuts. SWUDI's product of a
soft and a hard cut never does worse than its parts, because it contains both.

## Choosing the parameter: L-curve, GCV, discrepancy

With `x_alpha` the Tikhonov solution, `beta = U^T b` and `f_k = f(sigma_k^2)`:

* **L-curve**: plot `log ||A x_alpha - b||` against `log ||x_alpha||`; the corner (maximum curvature)
  balances fitting the data and blowing up the solution.
* **GCV**: minimize `G(alpha) = ||A x_alpha - b||^2 / (m - sum_k f_k)^2` (leave-one-out prediction
  error, in closed form).
* **Discrepancy principle**: the most regularized `alpha` with `||A x_alpha - b|| <= ||e||` (needs
  the noise norm).
* **Oracle**: `argmin ||x_alpha - x_true||` (needs the truth: the best any rule could do).
"""),
    code('''
alphas = (float(lam[0]) * np.logspace(-16, 0, 81)).tolist()
picks = {
    "oracle": choice.oracle(A, b, S.tikhonov, alphas, x_true, decomposition=dec),
    "GCV": choice.gcv(A, b, S.tikhonov, alphas, decomposition=dec),
    "discrepancy": choice.discrepancy(A, b, S.tikhonov, alphas, data.noise_norm, decomposition=dec),
}
corner = choice.l_curve(A, b, S.tikhonov, alphas, decomposition=dec)
for name, c in {**picks, "L-curve": corner}.items():
    print(f"{name:<12s} alpha = {c.param:.3g}  relative error {rel(c.x):.3g}")
c0 = picks["oracle"]  # all choices share the same grid, sorted most regularized first
viz.l_curve_figure(c0.residual_norms, c0.solution_norms, params=c0.params, param_name="alpha",
                   corner=corner.index, chosen={k: c.index for k, c in picks.items()},
                   title="Tikhonov L-curve with the parameter each rule picks")
''', "hero"),
    code('''
G = picks["GCV"].criterion.numpy()
err = picks["oracle"].criterion.numpy() / float(x_true.norm())
viz.side_by_side([
    viz.error_curve_figure({"GCV function G(alpha)": (c0.params, G)}, x_title="alpha", y_title="G(alpha)",
                           log_y=True, title="GCV function"),
    viz.error_curve_figure({"relative error (oracle)": (c0.params, err)}, x_title="alpha",
                           y_title="||x_alpha - x_true|| / ||x_true||", log_y=True, title="true error"),
], title="GCV's minimum sits next to the true error's minimum")
'''),
    md("""
The check: every data-driven rule lands within a factor 3 of the oracle's error, for every
one-parameter family of the table above.
"""),
    code('''
for family, errs in table.items():
    for rule in ("gcv", "l_curve", "discrepancy"):
        if rule in errs:
            assert errs[rule] <= 3 * errs["oracle"], (family, rule, errs)
best = min(e["oracle"] for e in table.values())
assert best * 10 <= rows[0]["error"], "the best filter beats the pseudoinverse by >= 10x"
print(f"all rules within 3x of the oracle; best filter {best:.3g} vs pseudoinverse {rows[0]['error']:.3g}")
'''),
    md("""
## SWUDI-A: the rank from the spectrum

SWUDI-A keeps the `K` largest eigen-directions of `C` (f = 1) and drops the rest, with `K` chosen per
layer from the spectrum: by default the **participation ratio of `sqrt(lambda)`**,
`K = ceil((sum_k sqrt(lambda_k))^2 / sum_k lambda_k)` (no global rank knob).
`swudi_lab.spectral.choose_rank` implements it and its siblings (`RANK_RULES`).

We try the rules on four spectra with `trace(C) = N = 8` and `d_in = 256`:

* **merge-like**: `C` of 8 random rank-8 task vectors plus 5% dense noise (`toy.merge_like_operator`):
  64 signal directions and a noise floor;
* **cliff**: 64 flat eigenvalues, then a drop of `10^-3`;
* **polynomial**: `lambda_k ~ k^-2` (a heavy head: few directions carry most of the trace);
* **exponential**: `lambda_k ~ exp(-0.1 k)` (a steady decay over the first ~100 directions).

The rules disagree most where the spectrum has no clear gap; the default sits near the gap when
there is one (cliff, merge-like) and adapts to the decay when there is not.
"""),
    code('''
N, d = 8, 256
op = toy.merge_like_operator(d_out=128, d_in=d, n_tasks=N, rank=8, noise=0.05, seed=0)
rhs = (op.D @ op.Q).pow(2).sum(0)  # ||D q_k||^2, needed by the loss-based rules
normalize = lambda s: N * s / s.sum()  # trace(C) = N
spectra = {
    "merge-like": op.lam.clamp_min(0),
    "cliff": normalize(toy.cliff_spectrum(d, k=64, gap=10**-1.5) ** 2),
    "polynomial": normalize(toy.polynomial_spectrum(d, decay=1.0) ** 2),
    "exponential": normalize(toy.exponential_spectrum(d, rate=0.05) ** 2),
}
RULES = [r for r in S.RANK_RULES if r not in ("wudi_risk", "loss_elbow")]
ranks = {name: {r: S.choose_rank(s, r) for r in RULES} for name, s in spectra.items()}
ranks["merge-like"].update({r: S.choose_rank(spectra["merge-like"], r, rhs_energy=rhs)
                            for r in ("wudi_risk", "loss_elbow")})
header_ = f"{'rule':<20s}" + "".join(f"{name:>13s}" for name in spectra)
print(header_)
for r in [*RULES, "wudi_risk", "loss_elbow"]:
    print(f"{r:<20s}" + "".join(f"{ranks[name].get(r, '-'):>13}" for name in spectra))
'''),
    code('''
viz.spectra_figure({k: v for k, v in spectra.items()}, normalize=True,
                   ranks={name: {"participation_sqrt": ranks[name]["participation_sqrt"]} for name in spectra},
                   title="Normalized spectra lambda_k d_in / N and the rank SWUDI-A keeps (participation of sqrt(lambda))")
'''),
    code('''
K_default = {name: r["participation_sqrt"] for name, r in ranks.items()}
assert all(1 <= K <= d for r in ranks.values() for K in r.values())
assert 32 <= K_default["cliff"] <= 128, "the default rule finds the cliff at k = 64 (within 2x)"
assert 32 <= K_default["merge-like"] <= 128, "on the merge-like spectrum it finds the 64 signal directions (within 2x)"
assert len(set(K_default.values())) == len(K_default), "the rank adapts to the spectrum"
print("SWUDI-A default ranks:", K_default)
'''),
    md("""
## Explore

Filters and rank rules on the merge-like spectrum: the scale-free time `kappa = t N / d_in`
(so `t = kappa / mean(lambda)`), the SWUDI ratio `r` (`K = ceil(r d_in)`), and a dropdown of rank
rules for `K`. Left: the factors of the exponential, top-K and SWUDI filters on the spectrum; right:
the spectrum with `K` marked.
""" + EXPLORER_NOTE),
    code('''
viz.filters_explorer(spectra["merge-like"], n_tasks=N, kappa=3.0, ratio=0.65, rule="participation_sqrt")
'''),
    md("""
**Next:** [4 · Merging is an inverse problem](04_merging_is_an_inverse_problem.ipynb): the same
spectra, filters and rank rules on real task vectors of a ViT.
"""),
]


# =============================================================================================
# 04 Merging is an inverse problem
# =============================================================================================

ZOO_INTRO = """
The **offline zoo** (`swudi_lab.zoo`): a small timm ViT (patch 4, width 128, 4 blocks) pretrained on
procedural 32 × 32 images, and 8 experts, each fine-tuned on one task (letters, shapes, orientation,
counting, photo textures, flags, patterns, colour) with a fixed prototype head. Seed 0 ships with the
repository; `load_zoo` verifies every file's sha256.
"""

NB04 = [
    header("04_merging_is_an_inverse_problem", "4 · Merging is an inverse problem", """
Now the real thing: task vectors of 8 fine-tuned ViT experts. Every linear layer of the merged
model is one noisy inverse problem `theta C = D`. We look at what the toy notebooks taught us to
look at:

* the **spectra of `C`** per layer (and `trace(C) = N`);
* **noise amplification**: the pseudoinverse's coefficients `|D q_k| / lambda_k` at small `lambda`;
* the **proxy loss against `K`**: keeping more directions always lowers the WUDI loss, but the
  solution's norm explodes;
* the **ranks SWUDI-A picks** per layer type (qkv, proj, fc1, fc2).
"""),
    INSTALL,
    SETUP,
    md("## The zoo\n" + ZOO_INTRO),
    code('''
from swudi_lab import spectral as S
from swudi_lab.merge import iter_layer_problems, merge
from swudi_lab.zoo import DATA_DIR, load_zoo

if DEVICE == "cpu":
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and immune to a busy CPU
zoo = load_zoo(DATA_DIR / "zoo", seed=0)
base = zoo.base_state_dict()
experts = {task: zoo.expert_state_dict(task) for task in zoo.tasks}
N = len(zoo.tasks)
print(zoo)
'''),
    md("""
## One inverse problem per layer

`swudi_lab.merge.iter_layer_problems` walks the merged 2-D weights exactly as the merge engine does
and yields, per layer, the task vectors `taus` (`N × d_out × d_in`), `C`, `D` and `eigh(C)`
(here in float64). Since `C = sum_i tau_i^T tau_i / ||tau_i||_F^2`, its trace is exactly `N`, so
its mean eigenvalue is `N / d_in`.
"""),
    code('''
problems = {p.name: p for p in iter_layer_problems(base, experts, device=DEVICE, dtype=torch.float64)}
short = lambda name: name.replace("blocks.", "b").replace(".weight", "").replace("attn.", "").replace("mlp.", "")
print(f"{'layer':<12s} {'d_out x d_in':>12s} {'trace(C)':>9s} {'lambda_max':>11s} {'lambda_min':>11s} {'K (SWUDI-A)':>12s}")
for name, p in problems.items():
    lam = p.eig.values
    K = S.choose_rank(lam, "participation_sqrt")
    print(f"{short(name):<12s} {str(tuple(p.D.shape)):>12s} {float(p.C.trace()):9.4f} {float(lam[0]):11.3g} "
          f"{float(lam[-1]):11.3g} {K:12d}")
assert all(abs(float(p.C.trace()) - N) < 1e-6 * N for p in problems.values()), "trace(C) = N on every layer"
'''),
    code('''
last = max(int(n.split(".")[1]) for n in problems)  # the last block
spectra = {short(n): p.eig.values.cpu() for n, p in problems.items() if n.startswith(f"blocks.{last}.")}
spectra.update({short(n): p.eig.values.cpu() for n, p in problems.items() if n.startswith("blocks.0.")})
viz.spectra_figure(spectra, normalize=True, fraction=True,
                   title="Normalized spectra lambda_k d_in / N of C, first and last block (x: k / d_in)")
'''),
    md("""
The spectra fall over several orders of magnitude: a few directions are shared by many task
vectors (large `lambda`), many are seen weakly or by a single task (small `lambda`). The small ones
are where a proxy-noise term `xi_k` in `D q_k = lambda_k r_k + xi_k` is divided by `lambda_k`.

## Noise amplification

Per direction `q_k` the pseudoinverse puts `D q_k / lambda_k`; a filter puts `f_k D q_k / lambda_k`
(plus `(1 - f_k)` of the start `theta0 = sum_i tau_i`). On a real layer the coefficients of the
closed form grow as `lambda` shrinks; SWUDI's filter (`(1 - exp(-lambda t)) * topK`) damps and then
drops exactly those.
"""),
    code('''
LAYER = f"blocks.{last}.mlp.fc1.weight"
p = problems[LAYER]
lam, V = p.eig.values.cpu(), p.eig.vectors.cpu()
d_in = lam.numel()
Dq = (p.D.cpu() @ V).norm(dim=0)  # |D q_k|
t_paper = 1300.0
filters = {
    "SWUDI (paper: t = 1300, r = 0.65)": S.swudi(t=t_paper, ratio=0.65),
    f"exponential (kappa = 3: t = {3 * d_in / N:.0f})": S.exponential(3 * d_in / N),
}
viz.noise_amplification_figure(lam, Dq, filters,
                               title=f"{short(LAYER)}: closed-form coefficients |D q_k| / lambda_k and filtered ones")
''', "hero"),
    md("""
## The proxy loss against `K`

Keep the `K` largest directions (top-K filter, start `theta0 = sum_i tau_i`) and watch two numbers:

* the **WUDI proxy loss** `L(theta_K) = tr(theta C theta^T) - 2 tr(theta D^T) + L(0)` relative to the
  start: it can only go down as `K` grows (each kept direction is solved exactly);
* the **size of the update** `||theta_K - theta0||_F / ||theta0||_F`: it explodes at large `K`, where
  the amplified noise enters.

The proxy loss is what WUDI minimizes; it is blind to the noise. That is why the pseudoinverse
(`K = d_in`) is the loss's favourite and accuracy's worst, and why the rank must be chosen by
another rule.
"""),
    code('''
def loss(theta, C, D, L0):
    """WUDI proxy loss tr(theta C theta^T) - 2 tr(theta D^T) + L(0) (DESIGN.md §1)."""
    return float(((theta @ C) * theta).sum() - 2 * (theta * D).sum()) + L0

curves_loss, curves_norm, chosen = {}, {}, {}
for name in [f"blocks.{last}.attn.qkv.weight", f"blocks.{last}.attn.proj.weight",
             f"blocks.{last}.mlp.fc1.weight", f"blocks.{last}.mlp.fc2.weight"]:
    p = problems[name]
    d = p.C.shape[0]
    theta0 = S.sum_init(p.taus)
    L0 = float(S.wudi_loss(torch.zeros_like(theta0), p.taus))  # the constant: L at theta = 0
    Ks = np.unique(np.round(np.linspace(1, d, 33)).astype(int))
    thetas = [S.spectral_estimate(p.C, p.D, theta0, S.top_k(k=int(K)), eig=p.eig) for K in Ks]
    start = loss(theta0, p.C, p.D, L0)
    curves_loss[short(name)] = (Ks / d, [loss(th, p.C, p.D, L0) / start for th in thetas])
    curves_norm[short(name)] = (Ks / d, [float((th - theta0).norm() / theta0.norm()) for th in thetas])
    chosen[short(name)] = S.choose_rank(p.eig.values, "participation_sqrt") / d
fig_loss = viz.error_curve_figure(curves_loss, x_title="K / d_in", y_title="L(theta_K) / L(theta0)",
                                  log_x=False, mark_min=False, title="proxy loss vs K")
fig_norm = viz.error_curve_figure(curves_norm, x_title="K / d_in", y_title="||theta_K - theta0|| / ||theta0||",
                                  log_x=False, log_y=True, mark_min=False, title="size of the update vs K")
for f in (fig_loss, fig_norm):
    viz.style.mark_x(f, 0.65, "SWUDI r = 0.65", "#888")
viz.side_by_side([fig_loss, fig_norm], title=f"Block {last}: more directions, lower proxy loss, exploding update")
'''),
    code('''
for name, (x, y) in curves_loss.items():
    assert all(b <= a + 1e-9 for a, b in zip(y, y[1:])), f"{name}: the proxy loss must not increase with K"
growth = {name: y[-1] / y[int(np.searchsorted(x, chosen[name]))] for name, (x, y) in curves_norm.items()}
print("update size at K = d_in relative to K = SWUDI-A's K:", {k: round(v, 2) for k, v in growth.items()})
assert all(g > 1 for g in growth.values()), "keeping every direction inflates the update"
'''),
    md("""
## The ranks SWUDI-A picks

SWUDI-A runs the merge with `f = 1` on the `K` largest directions, `K` from the participation ratio
of `sqrt(lambda)` per layer. The merge engine's report records `K` per layer; the figure groups them
by layer type.
"""),
    code('''
result = merge(base, experts, "swudi_a", device=DEVICE, progress=False)
rows = [r for r in result.report.rows if r.get("route") == "solver"]
ranks = {r["name"]: r["k"] for r in rows}
d_ins = {r["name"]: r["shape"][1] for r in rows}
assert all(1 <= ranks[n] <= d_ins[n] for n in ranks), "SWUDI-A ranks lie in [1, d_in]"
assert all(ranks[n] == S.choose_rank(problems[n].eig.values, "participation_sqrt") for n in ranks)
for kind in viz.LAYER_TYPES:
    ks = [ranks[n] / d_ins[n] for n in ranks if f".{kind}." in n]
    print(f"{kind:>4s}: K / d_in from {min(ks):.2f} to {max(ks):.2f}")
viz.layer_ranks_figure(ranks, d_ins, title="K / d_in chosen by SWUDI-A per layer (paper's SWUDI: 0.65 everywhere)")
'''),
    md("""
## Explore

Pick a layer, a rank rule and the scale-free time `kappa = t N / d_in`. Left: the exponential,
top-K and SWUDI factors on the layer's spectrum; right: the closed-form coefficients and the filtered
ones, i.e. how much of the amplified tail each choice lets through.
""" + EXPLORER_NOTE),
    code('''
import ipywidgets as widgets

rhs = {n: (p.D @ p.eig.vectors).pow(2).sum(0).cpu() for n, p in problems.items()}  # ||D q_k||^2

def layer_figure(layer, rule, kappa):
    p = problems[layer]
    lam = p.eig.values.cpu()
    d = lam.numel()
    K = S.choose_rank(lam, rule, rhs_energy=rhs[layer])
    t = kappa * d / N
    filters = {f"exponential(kappa={kappa:.3g})": S.exponential(t), f"top_k(K={K}, {rule})": S.top_k(k=K),
               "swudi (exp x top-K)": S.swudi(t, k=K)}
    left = viz.filter_factors_figure(filters, eigenvalues=lam, title="filter factors on the spectrum")
    right = viz.noise_amplification_figure(lam, rhs[layer].sqrt(), filters, title="coefficients |D q_k| f_k / lambda_k")
    return viz.side_by_side([left, right], title=f"{short(layer)} (d_in = {d}): K = {K} ({rule}), t = {t:.3g}")

layers = list(problems)
viz.explore(layer_figure, {
    "layer": widgets.Dropdown(options=layers, value=LAYER, description="layer"),
    "rule": widgets.Dropdown(options=list(S.RANK_RULES), value="participation_sqrt", description="rank rule"),
    "kappa": widgets.FloatLogSlider(value=3.0, base=10, min=-1, max=3, step=0.1, description="kappa",
                                    continuous_update=False),
}, fallback_grid={"layer": [n for n in layers if n.startswith(f"blocks.{last}.")], "kappa": [0.3, 3.0, 30.0]})
'''),
    md("""
**Next:** [5 · End-to-end ViT merge](05_end_to_end_vit_merge.ipynb): merge the whole model with every
method and score it on the 8 tasks.
"""),
]


# =============================================================================================
# 05 End-to-end ViT merge
# =============================================================================================

NB05 = [
    header("05_end_to_end_vit_merge", "5 · End-to-end ViT merge", """
Merge 8 ViT experts into one model with every method of the registry and score it the way the
merging literature does: each task with its own head, on its own test split.

* **Offline (default, CPU):** the shipped zoo (a small timm ViT, 8 procedural tasks).
* **Online (Colab with a GPU):** a hub-pretrained timm ViT (`vit_small_patch16_224`) fine-tuned on
  torchvision datasets (MNIST, SVHN, EuroSAT, GTSRB, DTD, CIFAR-10) by the same zoo pipeline.

The output: the method table (average and normalized accuracy, merge time), a per-task heatmap and
an explorer of accuracy over SWUDI's two knobs, the time `kappa` and the ratio `r`.
"""),
    INSTALL,
    SETUP,
    md("## The experts\n" + ZOO_INTRO + """
On a GPU in Colab the cell below builds the online zoo instead (downloads, fine-tuning: about 10-20
minutes once; cached afterwards). Set `RECIPE` by hand to choose.
"""),
    code('''
from swudi_lab import evaluate as E
from swudi_lab.merge import merge
from swudi_lab.merge.sweep import filter_sweep, kappa_time
from swudi_lab.zoo import DATA_DIR, build_zoo, load_zoo

RECIPE = "hub" if (IN_COLAB and DEVICE == "cuda") else "zoo"
if DEVICE == "cpu":
    torch.set_num_threads(1)  # small ViT: one thread is fastest on a shared CPU
if RECIPE == "hub":  # online: hub-pretrained timm ViT + torchvision datasets (needs internet and a GPU)
    from swudi_lab.zoo import online
    config = online.online_config("vit_small_patch16_224", n_train=2000, n_test=500, steps=300)
    zoo = build_zoo("/content/zoo_online", seed=0, config=config, device=DEVICE)
else:
    zoo = load_zoo(DATA_DIR / "zoo", seed=0)
base = zoo.base_state_dict()
experts = {task: zoo.expert_state_dict(task) for task in zoo.tasks}
print(zoo)
'''),
    md("""
**Test images.** On a CPU we score on the first `N_TEST` test images of each task so that the whole
notebook runs in about a minute (each merged model is one pass over `8 × N_TEST` images); on a GPU,
on the full test splits. Every row of the table uses the same images. For the full numbers over three
expert seeds, run `make demo`.
"""),
    code('''
N_TEST = None if DEVICE == "cuda" else 100
data = zoo.test_data(max_per_task=N_TEST)
score = lambda state: E.evaluate_backbone(state, zoo, data, device=DEVICE)
expert_acc = {t: E.evaluate_backbone(experts[t], zoo, {t: data[t]}, device=DEVICE)[t] for t in zoo.tasks}
base_acc = score(base)
print(f"{sum(len(y) for _, y in data.values())} test images; base with heads {E.average_accuracy(base_acc):.1f}%, "
      f"experts on their own task {E.average_accuracy(expert_acc):.1f}%")
'''),
    md("""
## Every method

From `swudi_lab.merge.METHODS`: the baselines (average, task arithmetic, TIES), WUDI (Adam, 300
steps, sum init), its closed form `D C^+`, SWUDI and SWUDI-A (the exponential filter alone, `iwudi`,
is SWUDI with `r = 1`: it appears in the sweep further down). The spectral
times are shown at the paper's values (`t = 1300` for SWUDI, tuned on CLIP ViT-B/32 with
`d_in = 768`) and **scale-matched** through `kappa = t N / d_in` (DESIGN.md "Scale"): the same
`kappa` as the paper's layers, i.e. `t = kappa d_in / N` per layer. WUDI's learning rate is likewise
shown at the paper's `lr = 1e-5` and scale-matched: Adam moves each entry by about `lr` per step, so
`lr = lr_rel * RMS(tau)` per layer, with `lr_rel = 0.038` chosen once on this zoo with
`swudi_lab.demo.calibrate_wudi_lr` so that 300 Adam steps act like the exponential filter at the
paper's `kappa ~ 3` (the task vectors here have entries of about `1.6e-3` RMS, so `lr = 1e-5` acts
like `kappa ~ 0.1`: WUDI barely leaves its sum init).
"""),
    code('''
from swudi_lab.demo import PAPER_KAPPA_IWUDI, PAPER_KAPPA_SWUDI

RUNS = {  # label: (registry method, parameters)
    "average": ("average", {}),
    "task arithmetic": ("task_arithmetic", {}),
    "ties": ("ties", {}),
    "wudi (lr 1e-5)": ("wudi", {}),
    "wudi (lr_rel 0.038)": ("wudi", {"lr_rel": 0.038}),
    "closed form": ("closed_form", {}),
    "swudi (t 1300, r 0.65)": ("swudi", {}),
    f"swudi (kappa {PAPER_KAPPA_SWUDI:.3g}, r 0.65)": ("swudi", {"kappa": PAPER_KAPPA_SWUDI}),
    "swudi_a": ("swudi_a", {}),
}
table, seconds, states = {}, {}, {}
for label, (method, params) in RUNS.items():
    with E.measure(DEVICE) as m:
        merged = merge(base, experts, method, device=DEVICE, progress=False, **params)
    states[label], seconds[label] = merged.state_dict, m.seconds
    table[label] = score(states[label])
avg = {label: E.average_accuracy(acc) for label, acc in table.items()}
print(f"{'method':<28s} {'avg acc':>8s} {'norm acc':>9s} {'merge s':>8s}")
for label in RUNS:
    print(f"{label:<28s} {avg[label]:8.2f} {E.normalized_accuracy(table[label], expert_acc):9.2f} {seconds[label]:8.2f}")
print(f"{'base with heads':<28s} {E.average_accuracy(base_acc):8.2f}")
print(f"{'experts (own task)':<28s} {E.average_accuracy(expert_acc):8.2f}")
'''),
    code('''
# What the filters buy: the same task vectors summed with task arithmetic's scale interfere far more.
# (How far a merge gets above the base itself depends on the zoo: on the offline one, with eight
# tasks on a 0.8 M-parameter ViT, the best merges keep 41-47 % of the experts' gain; see below.)
base_avg = E.average_accuracy(base_acc)
for label in [l for l in avg if l.startswith("swudi")]:
    print(f"{label:<28s} {avg[label]:.2f}%  ({avg[label] - avg['task arithmetic']:+.2f} over task arithmetic, "
          f"{avg[label] - base_avg:+.2f} over the base with heads)")
assert all(avg[l] > avg["task arithmetic"] for l in avg if l.startswith("swudi")), "SWUDI must beat task arithmetic"
fig = viz.accuracy_bar_figure(avg, base=E.average_accuracy(base_acc), experts=E.average_accuracy(expert_acc),
                              title=f"Average accuracy of the merged ViT over {len(zoo.tasks)} tasks")
fig.update_layout(margin=dict(b=170), height=560)  # room for the method labels
''', "hero"),
    code('''
fig = viz.task_heatmap_figure({"experts (own task)": expert_acc, **table, "base with heads": base_acc},
                              title="Accuracy per task (%): which tasks survive the merge")
fig.update_layout(margin=dict(l=200))  # room for the method labels
'''),
    md("""
**What to look at.** WUDI at the paper's `lr = 1e-5` barely leaves its start, the plain sum of the
task vectors (task arithmetic scales that sum by 0.3): on this zoo the task-vector entries are about
`1.6e-3`, so the absolute learning rate is far too small; scale-matched it behaves like the spectral
methods. Those take about a second for the whole model (notebook 6). Differences of a point or two
between methods are within the noise of `8 × N_TEST` test images; `make demo` reports three expert
seeds on the full test sets. Expect a merge of all eight tasks to keep less than half of the
experts' gain: eight tasks on a 0.8 M-parameter ViT leave a merge less room than CLIP's 88 M, and
the filters cannot remove interference that the normal equation itself contains.
`benchmarks/merge_regime.py` measures it (three expert seeds): with two tasks the filters and the
closed form keep about 82 % of the gain and averaging 64 %; with eight, the filters keep 43-44 %,
the closed form 41 % and averaging or task arithmetic about 22 %: the paper's ordering. The README
discusses what that means for the paper's claims.
"""),
    md("""
## How far the experts are from weight disentanglement

Merging works when the experts are *weight-disentangled* (Ortiz-Jiménez et al., NeurIPS 2023):
adding one expert's task vector `tau_s` leaves every other task's outputs alone, and a fraction of
`tau_t` already gives most of task t's gain. Two diagnostics from `swudi_lab.evaluate` test both,
one expert at a time, before any merge:

* `own_response`: task t's accuracy at `theta0 + alpha tau_t`. Averaging keeps `1/N` of each task
  vector, so the share of the gain at `alpha = 1/N` is the most it can keep even without interference.
  CLIP's fine-tuned experts overshoot (a fraction of `tau_t` already does most of the job); if the
  response is linear, `1/8` of `tau_t` gives about an eighth of the gain.
* `cross_effect`: `acc_t(theta0 + tau_s) - acc_t(theta0)` for every pair. The diagonal is each
  expert's gain; off the diagonal, what one expert alone does to the other tasks: 0 for
  disentangled experts, negative where `tau_s` damages task t.

Neither is about a merge method: they tell how much room a zoo leaves to all of them. (On the full
test splits of three expert seeds, `make demo` measures 22 % of the gain at `alpha = 1/8`, an
off-diagonal mean of about -9.5 points, and colour's task vector costing the other tasks 26 points
on average and up to 51.)
"""),
    code('''
alpha = 1 / len(experts)
response = E.own_response(base, experts, zoo, data, alphas=(alpha,), device=DEVICE)
share = [E.recovered_gain({t: r[alpha]}, base_acc, expert_acc) for t, r in response.items()]
effect = E.cross_effect(base, experts, zoo, data, device=DEVICE, base_acc=base_acc)
off = [effect[s][t] for s in effect for t in effect[s] if s != t]
print(f"theta0 + tau_t / {len(experts)} keeps {np.nanmean(share):.0f} % of task t's gain on average")
print(f"one expert alone moves the other tasks by {np.mean(off):+.1f} points on average (worst {min(off):+.1f})")
assert all(abs(effect[t][t] - (expert_acc[t] - base_acc[t])) < 1e-9 for t in zoo.tasks)  # diagonal = gain
fig = viz.task_heatmap_figure({f"+ tau ({s})": row for s, row in effect.items()}, y_title="expert added",
                              signed=True, title="acc_t(theta0 + tau_s) - acc_t(theta0): one expert, every task")
fig.update_layout(margin=dict(l=160))
'''),
    md("""
**Reading the matrix.** Rows are the expert added, columns the task scored. A weight-disentangled zoo
would show its gains on the diagonal and pale cells elsewhere; here many off-diagonal cells are red,
colour's row the deepest, while letters' and patterns' rows stay pale. Each of those experts alone
already takes points from the other tasks, and a merge of all eight adds the damage of seven
experts to each task: that is why no method keeps more than about half of the experts' gain. The
levers are the model's, not the merge's: a longer pretraining on more images made experts that add
up far better (the README compares three bases: merges of all eight kept 5-9 % of the gain on the
second and keep 41-47 % on this one).
"""),
    md("""
## What a merge loses: the features, or their alignment with the heads?

A fixed head reads a backbone only along the directions of its prototypes. A **linear probe**
fitted on the backbone's own features of a task reads whatever they hold:
`E.probe_accuracy` fits a ridge (Tikhonov) least-squares classifier in closed form on training
images and scores it on the test images. It uses task data, so it is a diagnostic, never a merge.
If a merged backbone reads well through probes and badly through the heads, the merge kept what the
experts learned and lost their alignment with the heads.
"""),
    code('''
train = {t: tuple(a[:300] for a in zoo.train_data(t)) for t in zoo.tasks}  # 300 training images per task (CPU time)
swudi_label = f"swudi (kappa {PAPER_KAPPA_SWUDI:.3g}, r 0.65)"  # merged and scored above
heads = {"base": base_acc, "swudi": table[swudi_label]}
probe = {"base": E.probe_accuracy(base, zoo, train, data, device=DEVICE),
         "swudi": E.probe_accuracy(states[swudi_label], zoo, train, data, device=DEVICE)}
for name in heads:
    print(f"{name:6s} heads {E.average_accuracy(heads[name]):5.1f} %   probes {E.average_accuracy(probe[name]):5.1f} %")
print(f"experts on their own task, through the heads: {E.average_accuracy(expert_acc):.1f} %")
assert E.average_accuracy(probe["base"]) > E.average_accuracy(base_acc)  # the base's features hold more than its heads read
'''),
    md("""
**Reading it.** The base's features already hold more of every task than the prototype heads
read: part of the experts' gain is alignment of the features with the fixed heads (the experts
themselves read about as well through their heads as through probes). The merged backbone gains
over the base both ways. Turning that into shares of the experts' gain needs the experts' probes
too: `benchmarks/merge_regime.py --probe` fits them (on all 4000 training images, stronger probes
than these 300-image ones) and scores the whole test splits. Over three expert seeds the filters
keep 54-56 % of the probes' gain and 43-44 % through the heads: about half of what the experts
learned survives in the merged features, and the heads read most of what survives.
"""),
    md("""
## SWUDI's two knobs: `kappa` and `r`

`swudi_lab.merge.sweep.filter_sweep` decomposes every layer once and evaluates the estimator for a
whole grid of filters: here SWUDI at three scale-free times `kappa` and two ratios `r`
(`K = ceil(r d_in)`; `r = 1` keeps every direction: the exponential filter alone). Each grid point is
then scored; the explorer shows accuracy against `kappa` at the chosen `r` and against `r` at the
chosen `kappa`. (A finer grid is one line away; on a CPU each point costs one pass over the test
images.)
""" + EXPLORER_NOTE),
    code('''
from swudi_lab.spectral import swudi

KAPPAS, RATIOS = (1.0, PAPER_KAPPA_SWUDI, 100.0), (0.65, 1.0)  # r = 1: the exponential filter (iwudi)
grid = {(PAPER_KAPPA_SWUDI, 0.65): table[f"swudi (kappa {PAPER_KAPPA_SWUDI:.3g}, r 0.65)"]}  # scored above
rules = {f"{k:g},{r:g}": (lambda d_in, n_live, k=k, r=r: swudi(kappa_time(k, d_in, n_live), ratio=r))
         for k in KAPPAS for r in RATIOS if (k, r) not in grid}  # per layer: t = kappa d_in / N
merged = filter_sweep(base, experts, rules, device=DEVICE)
grid.update({(k, r): score(merged[f"{k:g},{r:g}"]) for k in KAPPAS for r in RATIOS if (k, r) not in grid})
refs = {"closed form": avg["closed form"], "wudi (lr 1e-5)": avg["wudi (lr 1e-5)"]}
viz.merge_explorer(grid, references=refs, per_task=False)
'''),
    md("""
**Next:** [6 · Speed and memory](06_speed_and_memory.ipynb): what one eigendecomposition saves
against 300 optimizer steps.
"""),
]


# =============================================================================================
# 06 Speed and memory
# =============================================================================================

NB06 = [
    header("06_speed_and_memory", "6 · Speed and memory", """
WUDI runs 300 Adam steps per layer on a loss that touches every expert; SWUDI does one
eigendecomposition of `C` (`d_in × d_in`) and one filtered product. This notebook measures the
difference on the zoo:

* **time and peak memory per method** (`swudi_lab.evaluate.measure`);
* **WUDI's reference loop** (autograd through the per-expert loss, as in the authors' code) against
  the fast exact-gradient Adam and the spectral methods;
* how the cost **scales with the layer width** `d_in`;
* the **accuracy-time Pareto plot**.
"""),
    INSTALL,
    SETUP,
    md("## The zoo\n" + ZOO_INTRO),
    code('''
from swudi_lab import evaluate as E
from swudi_lab import toy
from swudi_lab.merge import merge
from swudi_lab.zoo import DATA_DIR, load_zoo

if DEVICE == "cpu":
    torch.set_num_threads(1)  # one thread: stable timings on a shared CPU
zoo = load_zoo(DATA_DIR / "zoo", seed=0)
base = zoo.base_state_dict()
experts = {task: zoo.expert_state_dict(task) for task in zoo.tasks}
print(zoo)
'''),
    md("""
## Time and peak memory per method

`measure(device)` records the wall-clock time and the peak memory above the memory in use at entry
(CPU: resident set high-water mark; GPU: `torch.cuda.max_memory_allocated`). WUDI's reference loop
costs `O(N d_out^2 d_in)` per step and per layer, far too slow to run 300 steps here, so we time it
at 0 and `REF_STEPS` steps and extrapolate linearly to 300 (the per-step cost is constant); the fast
Adam (exact gradient `2 (theta C - D)`, `O(d_out d_in^2)` per step) runs its 300 steps for real.
"""),
    code('''
REF_STEPS = 3
RUNS = {  # label: (registry method, parameters)
    "average": ("average", {}),
    "ties": ("ties", {}),
    "wudi (fast Adam, 300 steps)": ("wudi", {}),
    "closed form": ("closed_form", {}),
    "iwudi": ("iwudi", {}),
    "swudi": ("swudi", {}),
    "swudi_a": ("swudi_a", {}),
}
costs, states = {}, {}
for label, (method, params) in RUNS.items():
    with E.measure(DEVICE) as m:
        out = merge(base, experts, method, device=DEVICE, progress=False, **params)
    costs[label] = {"time": m.seconds, "memory": m.peak_mb}
    states[label] = out.state_dict

ref = {}
for steps in (0, REF_STEPS):
    with E.measure(DEVICE) as m:
        merge(base, experts, "wudi", reference=True, steps=steps, device=DEVICE, progress=False)
    ref[steps] = m
per_step = max(ref[REF_STEPS].seconds - ref[0].seconds, 0.0) / REF_STEPS
costs["wudi (reference loop, 300 steps)"] = {"time": ref[0].seconds + 300 * per_step,
                                             "memory": ref[REF_STEPS].peak_mb}
print(f"{'method':<34s} {'time (s)':>9s} {'peak MiB':>9s}")
for label, c in costs.items():
    print(f"{label:<34s} {c['time']:9.3f} {c['memory']:9.1f}")
print(f"(reference loop: {per_step * 1e3:.0f} ms per step for all layers, extrapolated to 300 steps)")
'''),
    code('''
t_swudi = costs["swudi"]["time"]
t_ref = costs["wudi (reference loop, 300 steps)"]["time"]
t_fast = costs["wudi (fast Adam, 300 steps)"]["time"]
print(f"SWUDI is {t_ref / t_swudi:.0f}x faster than WUDI's reference loop and {t_fast / t_swudi:.1f}x faster "
      f"than the fast exact-gradient Adam")
assert t_swudi < t_ref, "SWUDI must be faster than WUDI's reference loop"
viz.cost_bars_figure(costs).update_layout(margin=dict(b=190), height=560)  # room for the method labels
''', "hero"),
    md("""
## How the cost scales with the layer width

One layer, `N = 8` task vectors of width `d_out = d_in = d` (`toy.merge_like_operator`), merged by
the registry through `merge` on a one-tensor "model". SWUDI's `eigh` costs `O(d^3)` once; the fast
Adam `O(d^3)` per step, times 300; the reference loop `O(N d^3)` per step (timed for a few steps and
extrapolated like above).
"""),
    code('''
widths = [64, 128, 256]
scaling = {"swudi": [], "wudi (fast Adam, 300 steps)": [], "wudi (reference, 300 steps)": []}
for d in widths:
    op = toy.merge_like_operator(d_out=d, d_in=d, n_tasks=8, rank=8, seed=0)
    b0 = {"w": torch.zeros(d, d, dtype=torch.float32)}
    ex = [{"w": tau.float()} for tau in op.taus]
    for label, method, params in [("swudi", "swudi", {}), ("wudi (fast Adam, 300 steps)", "wudi", {})]:
        with E.measure(DEVICE) as m:
            merge(b0, ex, method, device=DEVICE, progress=False, **params)
        scaling[label].append(m.seconds)
    with E.measure(DEVICE) as m0:
        merge(b0, ex, "wudi", reference=True, steps=0, device=DEVICE, progress=False)
    with E.measure(DEVICE) as m1:
        merge(b0, ex, "wudi", reference=True, steps=REF_STEPS, device=DEVICE, progress=False)
    scaling["wudi (reference, 300 steps)"].append(m0.seconds + 300 * max(m1.seconds - m0.seconds, 0) / REF_STEPS)
viz.error_curve_figure({k: (widths, v) for k, v in scaling.items()}, x_title="layer width d = d_in = d_out",
                       y_title="merge time of one layer (s)", log_y=True, mark_min=False,
                       title="Merge time of one layer vs its width (log-log)")
'''),
    md("""
## Accuracy against time: the Pareto plot

Accuracy of every merged model (first `N_TEST` test images per task on a CPU, all on a GPU) against
its merge time. A method is on the Pareto front when no other is both faster and more accurate.
"""),
    code('''
N_TEST = None if DEVICE == "cuda" else 32
data = zoo.test_data(max_per_task=N_TEST)
acc = {label: E.average_accuracy(E.evaluate_backbone(state, zoo, data, device=DEVICE))
       for label, state in states.items()}
points = {label: (costs[label]["time"], acc[label]) for label in states}
for label, (t, a) in points.items():
    print(f"{label:<30s} {t:8.3f} s  {a:6.2f}%")
viz.pareto_figure(points)
'''),
    md("""
## Explore: WUDI's steps against one eigendecomposition

WUDI's cost grows linearly with its number of Adam steps `n`, SWUDI's does not have such a knob.
Slide `n` to see where WUDI lands on the accuracy-time plane (each point merged and scored above).
""" + EXPLORER_NOTE),
    code('''
import ipywidgets as widgets

STEPS = (30, 100, 300)
wudi_points = {300: points["wudi (fast Adam, 300 steps)"]}  # measured above
for n in STEPS[:-1]:
    with E.measure(DEVICE) as m:
        out = merge(base, experts, "wudi", steps=n, device=DEVICE, progress=False)
    wudi_points[n] = (m.seconds, E.average_accuracy(E.evaluate_backbone(out.state_dict, zoo, data, device=DEVICE)))

def pareto_at(steps):
    pts = {k: v for k, v in points.items() if not k.startswith("wudi")}
    pts[f"wudi ({steps} steps)"] = wudi_points[steps]
    return viz.pareto_figure(pts, title=f"Accuracy vs merge time with WUDI at {steps} Adam steps")

viz.explore(pareto_at, {"steps": widgets.SelectionSlider(options=list(STEPS), value=300, description="WUDI steps",
                                                         continuous_update=False)})
'''),
    md("""
That is the end of the course. The command line does the same at scale: `swudi-lab merge`,
`swudi-lab bench`, `make demo` (all methods, three expert seeds, mean ± std).
"""),
]


NOTEBOOKS = {
    "01_noisy_inverse_problem": NB01,
    "02_gd_is_a_spectral_filter": NB02,
    "03_filters_and_rank_rules": NB03,
    "04_merging_is_an_inverse_problem": NB04,
    "05_end_to_end_vit_merge": NB05,
    "06_speed_and_memory": NB06,
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": [], "name": f"{name}.ipynb"}
    for i, cell in enumerate(nb.cells):  # stable ids: reviewable diffs
        cell["id"] = f"{name[:2]}-{i:02d}"
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if a notebook on disk differs from its source")
    ap.add_argument("names", nargs="*", help="notebooks to write (default: all)")
    args = ap.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        if args.names and name not in args.names:
            continue
        text = nbformat.writes(build(name, cells)) + "\n"
        path = OUT / f"{name}.ipynb"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)} ({len(cells)} cells)")
    if stale:
        print("out of date (run tools/build_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
