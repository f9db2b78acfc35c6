# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1 · A noisy linear inverse problem
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/swudi-lab/swudi_lab/blob/main/notebooks/01_noisy_inverse_problem.ipynb)
#
# **The claim.** On noisy data the pseudoinverse of an ill-posed problem is useless: here its error
# is more than a thousand times the size of the solution itself. Every classic regularizer is one
# choice of **filter factors** $f(\lambda)$, one number per direction that decides how much of it to
# trust; the ones that switch off the directions drowned in noise recover the solution to within
# 10 %. The Picard plot below shows where the noise takes over; the filtered solutions show the recovery.
#
# Model merging will turn out to be such a *noisy linear inverse problem*. This first notebook is
# about these problems on their own, with a classic test problem whose true solution we know:
#
# * what makes a problem **ill-posed**: singular values that decay to zero;
# * the **Picard plot**: when data are fit to be inverted, and where noise takes over;
# * why the **pseudoinverse blows up** on noisy data;
# * **filter factors** $f(\lambda)$, and how every classic regularizer is one choice of $f$.
#
# Everything runs on the CPU in a few seconds.

# %% tags=["setup"]
try:
    import swudi_lab  # first: its torchvision shim must run before anything imports timm
except ImportError:  # Colab: fetch swudi_lab (code + the shipped offline zoo under data/) and install it,
    # keeping Colab's own torch, plotly and ipywidgets (--no-deps)
    # !git clone -q --depth 1 https://github.com/swudi-lab/swudi_lab /content/swudi_lab
    # !pip install -q --no-deps -e /content/swudi_lab && pip install -q timm safetensors
    import sys; sys.path.insert(0, "/content/swudi_lab"); import swudi_lab
import numpy as np
import torch

from swudi_lab import viz

DEVICE = swudi_lab.setup_notebook()

# %% [markdown]
# ## The problem: $A x = b$ with noisy $b$
#
# `shaw` (from Hansen's *Regularization Tools*) is a 1-D image-restoration problem: a smooth kernel
# $A$ ($64 \times 64$) blurs an unknown signal $x_{\text{true}}$; we observe
# $b = A x_{\text{true}} + e$ with white noise $e$ of expected relative size
# $\|e\| / \|b_{\text{exact}}\| = 10^{-3}$ (the draw's own ratio is printed below). The tools: `swudi_lab.toy.make_problem` (test problems
# with known solutions) and `swudi_lab.toy.white_noise`.

# %%
from swudi_lab import spectral as S
from swudi_lab import toy
from swudi_lab.viz.explorers import EIG_ATA

torch.set_num_threads(1)  # toy problems are tiny: one thread is fastest (and immune to a busy CPU)
NOISE = 1e-3  # relative noise level ||e|| / ||b_exact||
problem = toy.make_problem("shaw", n=64)
data = toy.white_noise(problem.b_exact, NOISE, seed=0)  # b = b_exact + e
A, b, x_true = problem.A, data.b, problem.x_true

dec = S.svd(A)  # A = U diag(sigma) V^T, sigma descending
sigma, lam = dec.sigma, dec.sigma**2  # lambda = sigma^2: eigenvalues of the normal operator A^T A
print(f"{problem.name}: A is {tuple(A.shape)}, sigma_1 = {sigma[0]:.3g}, sigma_n = {sigma[-1]:.3g}, "
      f"condition number {sigma[0] / sigma[-1]:.2e}")
print(f"noise: ||e|| = {data.noise_norm:.3g}  (||b_exact|| = {problem.b_exact.norm():.3g}, "
      f"ratio {data.noise_norm / problem.b_exact.norm():.3g})")
assert sigma[-1] < 1e-15 and abs(data.noise_norm / problem.b_exact.norm() - NOISE) < 0.2 * NOISE

# %%
truth_fig = viz.solutions_figure(x_true, {}, grid=problem.grid, title="the unknown x_true")
data_fig = viz.solutions_figure(None, {"b_exact = A x_true": problem.b_exact, "b = b_exact + e (observed)": b},
                                grid=problem.grid, title="the data b")
data_fig.update_traces(selector=dict(name="b_exact = A x_true"), line=dict(color="#000000", width=3))
data_fig.update_traces(selector=dict(name="b = b_exact + e (observed)"), mode="markers",
                       marker=dict(size=6, symbol="circle-open", color=viz.color("tikhonov")))
data_fig.update_yaxes(title_text="bᵢ")
viz.side_by_side([truth_fig, data_fig], title="shaw: a smooth kernel blurs x_true; we see b, with 0.1 % noise")

# %% [markdown]
# ## The pseudoinverse blows up
#
# The least-squares solution $x = A^+ b$ expands $b$ in the singular vectors $u_k$, $v_k$:
#
# $$x = \sum_k \frac{u_k^\top b}{\sigma_k}\, v_k, \qquad
#   \frac{u_k^\top b}{\sigma_k} = v_k^\top x_{\text{true}} + \frac{u_k^\top e}{\sigma_k}
#   \quad\text{for } b = b_{\text{exact}} + e .$$
#
# The noise coefficients $u_k^\top e$ do not decay (white noise has the same size in every direction),
# but they are divided by $\sigma_k$, which falls to $\sigma_n$ printed above: the last directions
# carry the noise multiplied by $1 / \sigma_n$, more than $10^{15}$.

# %%
x_pinv = S.filtered_solve(A, b, S.pseudoinverse(), decomposition=dec)
rel = lambda x: float((x - x_true).norm() / x_true.norm())  # relative error ||x - x_true|| / ||x_true||
err_pinv = rel(x_pinv)
print(f"pseudoinverse: relative error {err_pinv:.3g}, max |x| = {x_pinv.abs().max():.3g} "
      f"(the truth has max |x| = {x_true.abs().max():.3g})")
assert err_pinv > 1000, "the pseudoinverse's error is more than a thousand times the size of the truth"
viz.side_by_side([
    viz.solutions_figure(x_true, {"pseudoinverse A⁺b": x_pinv}, grid=problem.grid,
                         title="pseudoinverse vs truth (the truth is the flat line!)"),
    viz.solutions_figure(x_true, {}, grid=problem.grid, title="the truth on its own scale"),
], title=f"The pseudoinverse of noisy data: relative error {err_pinv:.2g}")

# %% [markdown]
# ## The Picard plot: where data end and noise begins
#
# The discrete **Picard condition** asks that the coefficients $|u_k^\top b|$ decay faster than the
# $\sigma_k$, so that the ratios $|u_k^\top b| / \sigma_k$ (the coefficients of the pseudoinverse) stay
# bounded. For exact data they do. With noise, $|u_k^\top b|$ levels off at the noise level
# ($\operatorname{std}(e)$, dashed) and the ratios explode: those directions hold noise, not signal,
# and a good solver must *not* invert them. `swudi_lab.toy.picard` computes the three curves.

# %% tags=["hero"]
pic = toy.picard(A, b, decomposition=dec)
k_noise = int((pic.coef > 3 * data.std).sum())  # directions whose coefficient stands above the noise
print(f"{k_noise} of {len(sigma)} coefficients |u_k^T b| stand above 3x the noise level {data.std:.2g}")
assert k_noise < len(sigma) // 2, "the Picard plot must show the noise floor"
viz.picard_figure(pic.sigma, pic.coef, noise_level=data.std,
                  title=f"Picard plot of shaw with 0.1 % noise: beyond k ≈ {k_noise} the ratio explodes")

# %% [markdown]
# ## Filter factors: how much of each direction to trust
#
# Every classic regularizer is the same formula with a different **filter factor**
# $f_k = f(\lambda_k)$ on $\lambda_k = \sigma_k^2$ (`swudi_lab.spectral.filtered_solve`):
#
# $$x_f = \sum_k f(\sigma_k^2)\, \frac{u_k^\top b}{\sigma_k}\, v_k .$$
#
# | filter | $f(\lambda)$ |
# |---|---|
# | pseudoinverse | $1$ |
# | Tikhonov | $\lambda / (\lambda + \alpha)$ |
# | exponential (gradient flow for time $t$) | $1 - e^{-\lambda t}$ |
# | Landweber ($n$ gradient steps of size $\eta$) | $1 - (1 - \eta\lambda)^n$ |
# | top-$K$ (truncated SVD) | $1$ on the $K$ largest $\lambda$, else $0$ |
#
# $f = 1$ trusts a direction fully; $f = 0$ drops it. The filters differ in how sharply they switch
# from 1 to 0. Below, each filter's parameter is the best one on a grid in hindsight (the *oracle*,
# `swudi_lab.spectral.choice.oracle`, which knows $x_{\text{true}}$); notebook 3 chooses it from the data.

# %%
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

# %%
viz.filter_factors_figure({c.filter.label: c.filter for c in best.values()}, eigenvalues=lam, eigenvalues_name=EIG_ATA,
                          title="Filter factors f(λ) at their best parameters (ticks: λ_k = σ_k²)")

# %%
viz.solutions_figure(x_true, {c.filter.label: c.x for c in best.values()}, grid=problem.grid,
                     title="Filtered solutions: every filter recovers x_true; the pseudoinverse could not")

# %% [markdown]
# All four filters switch off the same directions (the ones the Picard plot showed to be noise) and
# all four land within 10 % of the truth, while the pseudoinverse's error is more than a thousand
# times the size of the truth. The cell prints both numbers and how many times lower the best
# filter's error is, and checks the claims:

# %%
err_best = min(rel(c.x) for c in best.values())
print(f"every filter within {max(rel(c.x) for c in best.values()):.1%} of the truth; "
      f"the pseudoinverse's error is {err_pinv:.2g} times the size of the truth")
print(f"best filter: {err_best:.3g} vs pseudoinverse {err_pinv:.3g}  ({err_pinv / err_best:.2g} times lower error)")
assert all(rel(c.x) < 0.1 for c in best.values()), "every filter at its best parameter is within 10% of x_true"
assert err_pinv > 1000 and err_best * 1000 <= err_pinv, "a filter beats the pseudoinverse by more than 1000x"

# %% [markdown]
# ## How the error depends on the noise level
#
# Less noise means more directions above the noise floor and a smaller error; but the pseudoinverse
# stays useless until the noise falls below $\sigma_n$, i.e. never at floating-point precision: even
# at a relative noise of $10^{-6}$ its error is still above 100 %.

# %%
levels = np.logspace(-6, -1, 11)
curves = {"pseudoinverse": [], "tikhonov (oracle α)": [], "top_k (oracle K)": []}
for level in levels:
    bn = toy.white_noise(problem.b_exact, float(level), seed=0).b
    curves["pseudoinverse"].append(rel(S.filtered_solve(A, bn, S.pseudoinverse(), decomposition=dec)))
    for key, name in (("tikhonov (oracle α)", "tikhonov"), ("top_k (oracle K)", "top_k")):
        family, grid = families[name]
        curves[key].append(rel(choice.oracle(A, bn, family, grid.tolist(), x_true, decomposition=dec).x))
print(f"at noise {levels[0]:.0e}: pseudoinverse {curves['pseudoinverse'][0]:.3g}, "
      f"tikhonov {curves['tikhonov (oracle α)'][0]:.3g}; at {levels[-1]:.0e}: "
      f"pseudoinverse {curves['pseudoinverse'][-1]:.3g}, tikhonov {curves['tikhonov (oracle α)'][-1]:.3g}")
assert curves["pseudoinverse"][0] > 1, "even at 1e-6 noise the pseudoinverse is useless"
assert all(p > 10 * t for p, t in zip(curves["pseudoinverse"], curves["tikhonov (oracle α)"]))
viz.error_curve_figure({k: (levels, v) for k, v in curves.items()}, x_title="relative noise level",
                       y_title="relative error", log_y=True, mark_min=False,
                       title="Error vs noise: filters degrade gracefully, the pseudoinverse does not")

# %% [markdown]
# ## Explore
#
# Move the noise level, pick a filter and slide its cutoff $\lambda_c$, the eigenvalue where the filter
# switches from 1 to 0: $\alpha = \lambda_c$ for Tikhonov, $t = 1 / \lambda_c$ for the exponential,
# $K = \#\{k : \lambda_k \ge \lambda_c\}$ for top-$K$. The explorer opens at the oracle's Tikhonov
# $\alpha$ from above. Watch the solution fall apart as the cutoff passes the noise floor of the
# Picard plot.

# %%
viz.inverse_problem_explorer(A=A, b=problem.b_exact, x_true=x_true, noise=NOISE, filter="tikhonov",
                             lambda_c=best["tikhonov"].param)

# %% [markdown]
# **Next:** [2 · Gradient descent is a spectral filter](02_gd_is_a_spectral_filter.ipynb): the
# Landweber filter above is *exactly* what $n$ steps of gradient descent compute, which is why
# stopping early regularizes.
