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
# # 2 · Gradient descent is a spectral filter
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/swudi-lab/swudi_lab/blob/main/notebooks/02_gd_is_a_spectral_filter.ipynb)
#
# **The claim.** WUDI merges a layer by running an optimizer for a few hundred steps on a quadratic
# loss. On such a loss, $n$ steps of gradient descent compute *exactly* the spectral filter
# $1 - (1 - \eta\lambda)^n$, and on a noisy layer the error first falls, then rises back to the closed
# form (*semiconvergence*, the figure below): stopping early beats the closed form. Adam, WUDI's
# optimizer, is not linear, but it acts like an exponential filter whose effective time grows with the
# learning rate. **The scale caveat:** a learning rate only means something relative to the size of the
# task-vector entries (Adam moves each entry by about $\text{lr}$ per step). Matched to that size,
# 300 Adam steps beat the closed form; too small, they stop short of it. That is why, on the
# small zoo of notebooks 5 and 6, whose entries are far smaller than CLIP's, WUDI at the paper's
# $\text{lr} = 10^{-5}$ is the worst method, and the same WUDI with a scale-matched rate is among the best.
#
# * **gradient descent** for $n$ steps *is* the Landweber filter $1 - (1 - \eta\lambda)^n$, exactly;
# * **gradient flow** for time $t$ *is* the exponential filter $1 - e^{-\lambda t}$;
# * **semiconvergence**: stopping early is a regularizer;
# * **Adam** acts like an exponential filter with a fitted *effective time* $t_{\text{eff}}$.

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
# ## A merge layer with a known truth
#
# The WUDI problem of one layer (docs/design.md): task vectors $\tau_i$ ($d_{\text{out}} \times d_{\text{in}}$,
# $i = 1, \dots, N$), $n_i = \|\tau_i\|_F^2$,
#
# $$C = \sum_i \frac{\tau_i^\top \tau_i}{n_i}, \qquad D = \sum_i \frac{\tau_i \tau_i^\top \tau_i}{n_i}, \qquad
#   L(\theta) = \operatorname{tr}(\theta C \theta^\top) - 2 \operatorname{tr}(\theta D^\top) + \text{const},$$
#
# with gradient $2 (\theta C - D)$ and normal equation $\theta C = D$. In a real model we never know
# the best merged layer. `swudi_lab.toy.random_merge_proxy` builds one where we do: each task sees
# inputs in a random low-rank subspace, the experts agree with a true $\theta^*$ there, and the task
# vectors we merge are noisy proxies (30 % noise). Then $D q_k = \lambda_k r_k + \xi_k$ with proxy
# noise $\xi_k$, and the pseudoinverse $D C^+$ amplifies it by $1 / \lambda_k$.

# %%
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

# %% [markdown]
# ## Gradient descent = the Landweber filter, exactly
#
# GD with step $\eta$ on $\theta C = D$, $\theta \leftarrow \theta - \eta (\theta C - D)$ (WUDI's
# gradient with learning rate $\eta / 2$), moves each eigen-direction $q_k$ independently:
# $(\theta_n - \theta_{\text{pinv}}) q_k = (1 - \eta\lambda_k)^n (\theta_0 - \theta_{\text{pinv}}) q_k$.
# So after $n$ steps it equals the **spectral estimator** (`swudi_lab.spectral.spectral_estimate`)
#
# $$\theta_f = \theta_0 (I - V F V^\top) + D V \operatorname{diag}(f / \lambda) V^\top, \qquad
#   F = \operatorname{diag}(f), \quad f(\lambda) = 1 - (1 - \eta\lambda)^n .$$
#
# We run GD (`swudi_lab.spectral.gradient_descent`) for 3000 steps and compare every recorded
# iterate with the closed-form Landweber estimate from one eigendecomposition.

# %%
eta = 1.0 / float(lam.max())
record = np.unique(np.round(np.logspace(0, np.log10(3000), 40)).astype(int)).tolist()
gd = S.gradient_descent(C, D, theta0, eta=eta, steps=record[-1], record=[0] + record)
closed = [S.spectral_estimate(C, D, theta0, S.landweber(eta, n), eig=eig) for n in gd.steps]
gap = max(float((th - cf).abs().max()) for th, cf in zip(gd.thetas, closed))
scale = max(float(th.abs().max()) for th in gd.thetas)
print(f"max |theta_GD - theta_landweber| over {len(gd.steps)} iterates: {gap:.2e} (entries up to {scale:.2f})")
assert gap <= 1e-10 * max(scale, 1.0), "GD must equal the Landweber filter"

# %% [markdown]
# ## Gradient flow = the exponential filter
#
# As $\eta \to 0$ with $t = \eta n$ fixed, $(1 - \eta\lambda)^n \to e^{-\lambda t}$: gradient flow for
# time $t$ is the exponential filter. `swudi_lab.spectral.gradient_flow` integrates the flow with a
# matrix exponential (no eigendecomposition), and it matches:

# %%
times = [1.0, 30.0, 300.0]
flow = S.gradient_flow(C, D, theta0, times=times)
gap_flow = max(float((th - S.spectral_estimate(C, D, theta0, S.exponential(t), eig=eig)).abs().max())
               for t, th in zip(times, flow))
print(f"max |theta_flow(t) - theta_exponential(t)| = {gap_flow:.2e}")
assert gap_flow <= 1e-8

viz.filter_factors_figure({
    "landweber(η = 1/λ_max, n = 30)": S.landweber(eta, 30),
    "exponential(t = 30 η)": S.exponential(30 * eta),
    "landweber(η = 1.9/λ_max, n = 30)": S.landweber(1.9 * eta, 30),
    "pseudoinverse": S.pseudoinverse(),
}, eigenvalues=lam, title="GD steps and gradient flow are filters: same t = ηn, nearly the same factors")

# %% [markdown]
# ## Semiconvergence: stopping early regularizes
#
# Measured against the truth $\theta^*$, the GD iterates first improve (large-$\lambda$ directions are
# fitted: signal) and then get worse (small-$\lambda$ directions are fitted: amplified proxy noise),
# converging to the closed form $D C^+$. The exponential filter at $t = \eta n$ traces the same curve.
# Stopped near its minimum, GD beats the closed form (the cell prints both errors); run much longer, it
# falls back to it. Whether an optimizer's fixed budget of steps lands near that minimum depends on its
# step size: the Adam section below.

# %% tags=["hero"]
err_gd = np.array([mp.error(th) for th in gd.thetas])
steps = np.array(gd.steps)
t_grid = eta * np.logspace(0, np.log10(3000), 60)  # t = eta n for n from 1 to 3000
err_exp = np.array([mp.error(S.spectral_estimate(C, D, theta0, S.exponential(t), eig=eig)) for t in t_grid])
i_best = int(np.argmin(err_gd))
n_best = int(steps[i_best])
fig = viz.error_curve_figure({"GD (landweber), n steps": (steps[1:], err_gd[1:]),
                              "exponential filter, t / η": (t_grid / eta, err_exp)},
                             x_title="steps n  (= t / η for the flow)", y_title="‖θ − θ*‖ / ‖θ*‖",
                             title="Semiconvergence of GD on a noisy merge layer")
viz.style.mark_y(fig, err_pinv, "closed form D C⁺", "#888")
print(f"best stopping point n = {n_best}: error {err_gd[i_best]:.3f} vs closed form {err_pinv:.3f} "
      f"(start {err_gd[0]:.3f}, after {steps[-1]} steps {err_gd[-1]:.3f})")
assert 0 < i_best < len(steps) - 1, "the semiconvergence minimum must be interior"
assert err_gd[i_best] < 0.9 * err_pinv, "early stopping must beat the closed form"
fig

# %% [markdown]
# ## Adam: not a filter, but it acts like one
#
# WUDI uses Adam ($\text{lr} = 10^{-5}$ in the paper, 300 steps, sum init). Adam rescales each
# coordinate's step, so it is not a linear function of $D$ and has no exact filter. But we can
# *measure* one: per eigen-direction, fit $f_k$ in
# $(\theta - \theta_0) q_k = f_k \,(D q_k / \lambda_k - \theta_0 q_k)$
# (`swudi_lab.spectral.empirical_filter_factors`), and find the exponential filter closest to it,
# $1 - e^{-\lambda t_{\text{eff}}}$ (`fit_effective_time`, with its $R^2$).
#
# Adam moves each entry by about $\text{lr}$ per step, so $\text{lr}$ is only meaningful relative to
# the size of the task-vector entries (docs/design.md, "Scale"). This layer's entries have the RMS
# printed below, so we try learning rates from about a hundredth to a tenth of it. The scale-free version of
# $t_{\text{eff}}$ is $\kappa = t_{\text{eff}} N / d_{\text{in}}$.

# %%
LRS = (3e-3, 1e-2, 3e-2)
rms_tau = float(mp.taus.pow(2).mean().sqrt())
print(f"RMS of the task-vector entries: {rms_tau:.3g}")
adam, fits = {}, {}
weights = ((D @ eig.vectors) / eig.values.clamp_min(1e-8) - theta0 @ eig.vectors).pow(2).sum(0)
for lr in LRS:
    tr = S.adam_wudi(C, D, theta0, lr=lr, steps=300, record=range(0, 301, 5))
    f_emp = S.empirical_filter_factors(tr.final, theta0, D, eig)
    t_eff, r2 = S.fit_effective_time(f_emp, eig.values, weights=weights)
    adam[lr], fits[lr] = tr, (f_emp, t_eff, r2)
    print(f"Adam lr={lr:g} (lr / RMS = {lr / rms_tau:.2g}): error after 300 steps {mp.error(tr.final):.3f} "
          f"(closed form {err_pinv:.3f}), t_eff = {t_eff:.3g} (kappa = {t_eff * N / d_in:.3g}), R^2 = {r2:.2f}")

# %% [markdown]
# The trajectories: with the smallest rate, 300 steps stop short and end above the closed form's
# error; the larger rates end below it, though above GD's best stopping point. The step size sets how
# far a fixed number of steps gets, which is the scale caveat in one figure.

# %%
curves = {f"Adam lr={lr:g}": (np.array(tr.steps[1:]), [mp.error(th) for th in tr.thetas[1:]])
          for lr, tr in adam.items()}  # (step 0, the start, is off the log axis)
curves["GD (landweber)"] = (steps[1:], err_gd[1:])
final = {lr: mp.error(tr.final) for lr, tr in adam.items()}
assert final[3e-3] > err_pinv and final[1e-2] < err_pinv and final[3e-2] < err_pinv, final
assert min(final.values()) > err_gd[i_best], final
fig = viz.error_curve_figure(curves, x_title="steps", y_title="‖θ − θ*‖ / ‖θ*‖",
                             title="Adam and GD trajectories: how far 300 steps get depends on the step size")
viz.style.mark_y(fig, err_pinv, "closed form", "#888")
fig

# %%
lr = 1e-2
f_emp, t_eff, r2 = fits[lr]
f_gd = S.empirical_filter_factors(gd.thetas[i_best], theta0, D, eig)  # exact for GD: the Landweber factors
viz.empirical_factors_figure(eig.values, {f"Adam lr={lr:g}, 300 steps": f_emp, f"GD n={n_best}": f_gd},
                             t_eff={f"Adam lr={lr:g}, 300 steps": t_eff},
                             title=f"Adam's measured filter factors and the exponential filter t_eff = {t_eff:.3g} (R² = {r2:.2f})")

# %%
f_check = S.empirical_filter_factors(gd.thetas[i_best], theta0, D, eig)
gap_f = float((f_check - S.landweber(eta, n_best)(eig.values)).abs().max())
print(f"GD's measured factors vs the Landweber formula: max gap {gap_f:.1e}")
assert gap_f < 1e-6
assert all(r2 > 0.5 for _, _, r2 in fits.values()), "Adam must be well described by an exponential filter"
assert fits[3e-3][1] < fits[1e-2][1] < fits[3e-2][1], "a larger learning rate means a longer effective time"

# %% [markdown]
# ## Explore
#
# Gradient descent on the shaw problem of notebook 1 ($A^\top A x = A^\top b$ from $x = 0$), here with
# 1 % noise so that the semiconvergence minimum lies inside the range of steps: slide the step size
# $\eta$ (as $\eta\lambda_{\max}$; GD diverges beyond 2) and the number of steps $n$. Left: the
# Landweber factors against the exponential filter with the same $t = \eta n$. Right: the error against
# $n$, with the current $n$ and the best $n$ marked. The explorer opens at the best $n$ (the cell
# checks that the minimum is interior and that the error rises after it).

# %%
from swudi_lab.viz.explorers import gd_error_curves

shaw = toy.make_problem("shaw", n=64)
GD_NOISE, MAX_STEPS = 1e-2, 100_000
n_grid, err_lw, _ = gd_error_curves(A=shaw.A, b=shaw.b_exact, x_true=shaw.x_true, noise=GD_NOISE, max_steps=MAX_STEPS)
j = int(np.argmin(err_lw))
print(f"shaw, 1% noise, eta = 1/lambda_max: error {err_lw[0]:.3f} after 1 step, {err_lw[j]:.3f} at the best "
      f"n = {n_grid[j]}, {err_lw[-1]:.3f} after {n_grid[-1]} steps")
assert 0 < j < len(n_grid) - 1 and err_lw[-1] > 1.2 * err_lw[j], "the minimum is interior and the error rises after it"
viz.gd_explorer(A=shaw.A, b=shaw.b_exact, x_true=shaw.x_true, noise=GD_NOISE, steps=int(n_grid[j]), max_steps=MAX_STEPS)

# %% [markdown]
# **Next:** [3 · Filters and rank rules](03_filters_and_rank_rules.ipynb): if the iteration is a
# filter, pick the filter directly (one eigendecomposition), and choose its parameter from the data.
