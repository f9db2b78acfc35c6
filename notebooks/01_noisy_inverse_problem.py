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
# Model merging will turn out to be a *noisy linear inverse problem*. This first notebook is about
# such problems on their own, with a classic test problem whose true solution we know:
#
# * what makes a problem **ill-posed**: singular values that decay to zero;
# * the **Picard plot**: when data are fit to be inverted, and where noise takes over;
# * why the **pseudoinverse blows up** on noisy data;
# * **filter factors** `f(lambda)`: one number per direction that decides how much of it to trust,
#   and how every classic regularizer is one choice of `f`.
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
# ## The problem: `A x = b` with noisy `b`
#
# `shaw` (from Hansen's *Regularization Tools*) is a 1-D image-restoration problem: a smooth kernel
# `A` (64 × 64) blurs an unknown signal `x_true`; we observe `b = A x_true + e` with white noise `e`
# of relative size `||e|| / ||b|| = 10^-3`. The tools: `swudi_lab.toy.make_problem` (test problems
# with known solutions) and `swudi_lab.toy.white_noise`.

# %%
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

# %%
viz.side_by_side([
    viz.solutions_figure(x_true, {}, grid=problem.grid, title="the unknown x_true"),
    viz.solutions_figure(None, {"b_exact = A x_true": problem.b_exact, "b = b_exact + e (observed)": b},
                         grid=problem.grid, title="the data b"),
], title="shaw: a smooth kernel blurs x_true; we see b, with 0.1% noise")

# %% [markdown]
# ## The pseudoinverse blows up
#
# The least-squares solution `x = A^+ b` expands `b` in the singular vectors:
#
# `x = sum_k (u_k^T b / sigma_k) v_k`,  and with `b = b_exact + e`:  `u_k^T b / sigma_k = v_k^T x_true + u_k^T e / sigma_k`.
#
# The noise coefficients `u_k^T e` do not decay (white noise has the same size in every direction),
# but they are divided by `sigma_k`, which falls to `1e-17` here. The last directions carry noise
# multiplied by `10^14` or more.

# %%
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

# %% [markdown]
# ## The Picard plot: where data end and noise begins
#
# The discrete **Picard condition** asks that the coefficients `|u_k^T b|` decay faster than the
# `sigma_k`, so that the ratios `|u_k^T b| / sigma_k` (the coefficients of the pseudoinverse) stay
# bounded. For exact data they do. With noise, `|u_k^T b|` levels off at the noise level
# (`std(e)`, dashed) and the ratios explode: those directions hold noise, not signal, and a good
# solver must *not* invert them. `swudi_lab.toy.picard` computes the three curves.

# %% tags=["hero"]
pic = toy.picard(A, b, decomposition=dec)
k_noise = int((pic.coef > 3 * data.std).sum())  # directions whose coefficient stands above the noise
print(f"{k_noise} of {len(sigma)} coefficients |u_k^T b| stand above 3x the noise level {data.std:.2g}")
viz.picard_figure(pic.sigma, pic.coef, noise_level=data.std,
                  title=f"Picard plot of shaw with 0.1% noise: beyond k ~ {k_noise} the ratio explodes")

# %% [markdown]
# ## Filter factors: how much of each direction to trust
#
# Every classic regularizer is the same formula with a different **filter factor** `f_k = f(lambda_k)`
# on `lambda_k = sigma_k^2`:
#
# `x_f = sum_k f(sigma_k^2) (u_k^T b / sigma_k) v_k`   (`swudi_lab.spectral.filtered_solve`)
#
# | filter | `f(lambda)` |
# |---|---|
# | pseudoinverse | `1` |
# | Tikhonov | `lambda / (lambda + alpha)` |
# | exponential (gradient flow for time `t`) | `1 - exp(-lambda t)` |
# | Landweber (`n` gradient steps of size `eta`) | `1 - (1 - eta lambda)^n` |
# | top-K (truncated SVD) | `1` on the `K` largest `lambda`, else `0` |
#
# `f = 1` trusts a direction fully; `f = 0` drops it. The filters differ in how sharply they switch
# from 1 to 0. Below, each filter's parameter is the best one on a grid in hindsight (the *oracle*,
# `swudi_lab.spectral.choice.oracle`, which knows `x_true`); notebook 3 chooses it from the data.

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
viz.filter_factors_figure({c.filter.label: c.filter for c in best.values()}, eigenvalues=lam,
                          title="Filter factors f(lambda) at their best parameters (ticks: lambda_k = sigma_k^2)")

# %%
viz.solutions_figure(x_true, {c.filter.label: c.x for c in best.values()}, grid=problem.grid,
                     title="Filtered solutions: every filter recovers x_true; the pseudoinverse could not")

# %% [markdown]
# All four filters switch off the same directions (the ones the Picard plot showed to be noise) and
# all four land within about 6% of the truth; the pseudoinverse's error is `5 * 10^4` times the size of the truth.
# That ratio is the number this notebook checks:

# %%
err_best = min(rel(c.x) for c in best.values())
print(f"best filter: {err_best:.3g} vs pseudoinverse {err_pinv:.3g}  ({err_pinv / err_best:.2e}x lower error)")
assert err_best * 10 <= err_pinv, "a filter must beat the pseudoinverse by at least 10x"
assert all(rel(c.x) < 0.2 for c in best.values()), "every filter at its best parameter recovers x_true"
assert k_noise < len(sigma) // 2, "the Picard plot must show the noise floor"

# %% [markdown]
# ## How the error depends on the noise level
#
# Less noise means more directions above the noise floor and a smaller error; but the pseudoinverse
# stays useless until the noise is below `sigma_n`, i.e. never at floating-point precision.

# %%
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

# %% [markdown]
# ## Explore
#
# Move the noise level, pick a filter and slide its cutoff `lambda_c` (the eigenvalue where the filter
# switches from 1 to 0: `alpha = lambda_c` for Tikhonov, `t = 1 / lambda_c` for the exponential,
# `K = #{lambda_k >= lambda_c}` for top-K). Watch the solution fall apart as the cutoff passes the
# noise floor of the Picard plot.

# %%
viz.inverse_problem_explorer(A=A, b=problem.b_exact, x_true=x_true, noise=NOISE, filter="tikhonov")

# %% [markdown]
# **Next:** [2 · Gradient descent is a spectral filter](02_gd_is_a_spectral_filter.ipynb): the
# Landweber filter above is *exactly* what `n` steps of gradient descent compute, which is why
# stopping early regularizes.
