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
# # 4 · Merging is an inverse problem
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/swudi-lab/swudi_lab/blob/main/notebooks/04_merging_is_an_inverse_problem.ipynb)
#
# **The claim.** Every linear layer of a real merge is a noisy inverse problem $\theta C = D$ like the
# toys of notebooks 1-3: the spectrum of $C$ spans orders of magnitude, the closed form's coefficients
# $\|D q_k\| / \lambda_k$ grow as $\lambda_k$ shrinks, if only mildly on this zoo (noise amplification,
# the figure below), and the
# WUDI proxy loss, blind to that noise, always prefers keeping more directions. So the rank must come
# from another rule; SWUDI-A's picks about half of the directions, fewer on `fc2`.
#
# Now the real thing: task vectors of 8 fine-tuned ViT experts. We look at what the toy notebooks taught
# us to look at:
#
# * the **spectra of $C$** per layer (and $\operatorname{tr}(C) = N$);
# * **noise amplification**: the pseudoinverse's coefficients $\|D q_k\| / \lambda_k$ at small $\lambda$;
# * the **proxy loss against $K$**: keeping more directions always lowers the WUDI loss, but the
#   update grows;
# * the **ranks SWUDI-A picks** per layer type (qkv, proj, fc1, fc2).

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
# ## The zoo
#
# The **offline zoo** (`swudi_lab.zoo`): a small timm ViT (patch 4, width 128, 4 blocks) pretrained on
# procedural 32 × 32 images, and 8 experts, each fine-tuned on one task (letters, shapes, orientation,
# counting, photo textures, flags, patterns, colour) with a fixed prototype head. Seed 0 ships with the
# repository; `load_zoo` verifies every file's sha256.

# %%
from swudi_lab import spectral as S
from swudi_lab.merge import iter_layer_problems, merge
from swudi_lab.zoo import load_zoo

if DEVICE == "cpu":
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and immune to a busy CPU
zoo = load_zoo(seed=0)
base = zoo.base_state_dict()
experts = {task: zoo.expert_state_dict(task) for task in zoo.tasks}
N = len(zoo.tasks)
print(zoo)

# %% [markdown]
# ## One inverse problem per layer
#
# `swudi_lab.merge.iter_layer_problems` walks the merged 2-D weights exactly as the merge engine does
# and yields, per layer, the task vectors `taus` ($N \times d_{\text{out}} \times d_{\text{in}}$), $C$, $D$
# and $\operatorname{eigh}(C)$ (here in float64). Since $C = \sum_i \tau_i^\top \tau_i / \|\tau_i\|_F^2$, its
# trace is exactly $N$, so its mean eigenvalue is $N / d_{\text{in}}$.

# %%
problems = {p.name: p for p in iter_layer_problems(base, experts, device=DEVICE, dtype=torch.float64)}
short = lambda name: name.replace("blocks.", "b").replace(".weight", "").replace("attn.", "").replace("mlp.", "")
print(f"{'layer':<12s} {'d_out x d_in':>12s} {'trace(C)':>9s} {'lambda_max':>11s} {'lambda_min':>11s} "
      f"{'max / min':>10s} {'K (SWUDI-A)':>12s}")
spread = {}
for name, p in problems.items():
    lam = p.eig.values
    K = S.choose_rank(lam, "participation_sqrt")
    spread[name] = float(lam[0] / lam[-1])
    print(f"{short(name):<12s} {str(tuple(p.D.shape)):>12s} {float(p.C.trace()):9.4f} {float(lam[0]):11.3g} "
          f"{float(lam[-1]):11.3g} {spread[name]:10.3g} {K:12d}")
assert all(abs(float(p.C.trace()) - N) < 1e-6 * N for p in problems.values()), "trace(C) = N on every layer"
assert min(spread.values()) > 100, "every layer's spectrum spans more than two orders of magnitude"

# %%
last = max(int(n.split(".")[1]) for n in problems)  # the last block
spectra = {short(n): p.eig.values.cpu() for n, p in problems.items() if n.startswith(f"blocks.{last}.")}
spectra.update({short(n): p.eig.values.cpu() for n, p in problems.items() if n.startswith("blocks.0.")})
viz.spectra_figure(spectra, normalize=True, fraction=True,
                   title="Normalized spectra λ_k d_in / N of C, first and last block (x: k / d_in)")

# %% [markdown]
# The spectra fall over orders of magnitude (the cell above prints $\lambda_{\max} / \lambda_{\min}$ per
# layer): a few directions are shared by many task vectors (large $\lambda$), many are seen weakly or by a
# single task (small $\lambda$). The small ones are where a proxy-noise term $\xi_k$ in
# $D q_k = \lambda_k r_k + \xi_k$ is divided by $\lambda_k$.
#
# ## Noise amplification
#
# Per direction $q_k$ the pseudoinverse puts $D q_k / \lambda_k$; a filter puts $f_k\, D q_k / \lambda_k$
# (plus $(1 - f_k)$ of the start $\theta_0 = \sum_i \tau_i$). On every layer of this zoo the closed form's
# coefficients are larger on the small-$\lambda$ directions than on the large ones, but only mildly: the
# cell prints, per layer, the median over the smallest quarter of the spectrum divided by the median over
# the largest quarter, a factor of a few at most, nothing like the toy problems' explosion (one reason the
# closed form holds its own in notebook 5). The figure shows the layer where it is clearest; SWUDI's
# filter, $(1 - e^{-\lambda t})$ times a top-$K$ cut, damps and then drops exactly those directions.

# %% tags=["hero"]
def amplification(p):
    """Median closed-form coefficient |D q_k| / lambda_k over the smallest quarter of the spectrum,
    over the median over the largest quarter."""
    coef = ((p.D @ p.eig.vectors).norm(dim=0) / p.eig.values).cpu().numpy()  # lambda descending
    q = coef.size // 4
    return float(np.median(coef[-q:]) / np.median(coef[:q]))

amp = {name: amplification(p) for name, p in problems.items()}
print("small-lambda over large-lambda coefficients, per layer: "
      + ", ".join(f"{short(n)} {v:.2f}" for n, v in amp.items()))
assert all(v > 1 for v in amp.values()), "on every layer the closed form amplifies the small-lambda directions"
LAYER = max(amp, key=amp.get)  # the layer where the amplification is clearest
p = problems[LAYER]
lam, V = p.eig.values.cpu(), p.eig.vectors.cpu()
d_in = lam.numel()
Dq = (p.D.cpu() @ V).norm(dim=0)  # |D q_k|
t_paper = 1300.0
filters = {
    "SWUDI (paper: t = 1300, r = 0.65)": S.swudi(t=t_paper, ratio=0.65),
    f"exponential (κ = 3: t = {S.kappa_time(3, d_in, N):.0f})": S.exponential(S.kappa_time(3, d_in, N)),
}
viz.noise_amplification_figure(lam, Dq, filters,
                               title=f"{short(LAYER)}: closed-form coefficients ‖D q_k‖ / λ_k and filtered ones")

# %% [markdown]
# ## The proxy loss against $K$
#
# Keep the $K$ largest directions (top-$K$ filter, start $\theta_0 = \sum_i \tau_i$) and watch two numbers:
#
# * the **WUDI proxy loss**
#   $L(\theta_K) = \operatorname{tr}(\theta_K C \theta_K^\top) - 2 \operatorname{tr}(\theta_K D^\top) + L(0)$
#   relative to the start: it can only go down as $K$ grows (each kept direction is solved exactly);
# * the **size of the update** $\|\theta_K - \theta_0\|_F / \|\theta_0\|_F$: it keeps growing with $K$, as
#   the amplified noise of the small-$\lambda$ directions enters (the cell prints by how much from
#   SWUDI-A's $K$ to $K = d_{\text{in}}$).
#
# The proxy loss is what WUDI minimizes; it is blind to the noise. That is why the loss alone cannot
# choose the rank: it always prefers the pseudoinverse ($K = d_{\text{in}}$), the update that carries all
# of the amplified noise, and the rank must be chosen by another rule.

# %%
def loss(theta, C, D, L0):
    """WUDI proxy loss L(theta) = tr(theta C theta^T) - 2 tr(theta D^T) + L(0)."""
    return S.quadratic_loss(theta, C, D) + L0

curves_loss, curves_norm, chosen = {}, {}, {}
for name in [f"blocks.{last}.attn.qkv.weight", f"blocks.{last}.attn.proj.weight",
             f"blocks.{last}.mlp.fc1.weight", f"blocks.{last}.mlp.fc2.weight"]:
    p = problems[name]
    d = p.C.shape[0]
    theta0 = S.sum_init(p.taus)
    L0 = S.loss_constant(p.taus)  # the constant: L at theta = 0
    Ks = np.unique(np.round(np.linspace(1, d, 33)).astype(int))
    thetas = [S.spectral_estimate(p.C, p.D, theta0, S.top_k(k=int(K)), eig=p.eig) for K in Ks]
    start = loss(theta0, p.C, p.D, L0)
    curves_loss[short(name)] = (Ks / d, [loss(th, p.C, p.D, L0) / start for th in thetas])
    curves_norm[short(name)] = (Ks / d, [float((th - theta0).norm() / theta0.norm()) for th in thetas])
    chosen[short(name)] = S.choose_rank(p.eig.values, "participation_sqrt") / d
fig_loss = viz.error_curve_figure(curves_loss, x_title="K / d_in", y_title="L(θ_K) / L(θ₀)",
                                  log_x=False, mark_min=False, title="proxy loss vs K")
fig_norm = viz.error_curve_figure(curves_norm, x_title="K / d_in", y_title="‖θ_K − θ₀‖ / ‖θ₀‖",
                                  log_x=False, log_y=True, mark_min=False, title="size of the update vs K")
for f in (fig_loss, fig_norm):
    viz.style.mark_x(f, 0.65, "SWUDI r = 0.65", "#888")
viz.side_by_side([fig_loss, fig_norm], title=f"Block {last}: more directions, lower proxy loss, a larger update")

# %%
for name, (x, y) in curves_loss.items():
    assert all(b <= a + 1e-9 for a, b in zip(y, y[1:])), f"{name}: the proxy loss must not increase with K"
growth = {name: y[-1] / y[int(np.searchsorted(x, chosen[name]))] for name, (x, y) in curves_norm.items()}
print("update size at K = d_in relative to K = SWUDI-A's K:", {k: round(v, 2) for k, v in growth.items()})
assert all(g > 1 for g in growth.values()), "keeping every direction inflates the update"
assert all(all(b >= a - 1e-9 for a, b in zip(y, y[1:])) for _, y in curves_norm.values()), "the update grows with K"

# %% [markdown]
# ## The ranks SWUDI-A picks
#
# SWUDI-A runs the merge with $f = 1$ on the $K$ largest directions, $K$ from the participation ratio
# of $\sqrt{\lambda}$ per layer. The merge engine's report records $K$ per layer; the figure groups them
# by layer type. On this zoo it keeps between 0.3 and 0.7 of the directions of every `qkv`, `proj` and
# `fc1` layer and fewer on every `fc2` (whose input is the 512-wide hidden layer); the cell checks both.

# %%
result = merge(base, experts, "swudi_a", device=DEVICE, progress=False)
rows = [r for r in result.report.rows if r.get("route") == "solver"]
ranks = {r["name"]: r["k"] for r in rows}
d_ins = {r["name"]: r["shape"][1] for r in rows}
assert all(1 <= ranks[n] <= d_ins[n] for n in ranks), "SWUDI-A ranks lie in [1, d_in]"
assert all(ranks[n] == S.choose_rank(problems[n].eig.values, "participation_sqrt") for n in ranks)
for kind in viz.LAYER_TYPES:
    ks = [ranks[n] / d_ins[n] for n in ranks if f".{kind}." in n]
    print(f"{kind:>4s}: K / d_in from {min(ks):.2f} to {max(ks):.2f}")
share_by_kind = {kind: [ranks[n] / d_ins[n] for n in ranks if f".{kind}." in n] for kind in viz.LAYER_TYPES}
assert max(share_by_kind["fc2"]) < min(min(v) for k, v in share_by_kind.items() if k != "fc2"), "fc2 keeps the fewest"
assert all(0.3 <= s <= 0.7 for k, v in share_by_kind.items() if k != "fc2" for s in v), "about half elsewhere"
viz.layer_ranks_figure(ranks, d_ins, title="K / d_in chosen by SWUDI-A per layer (paper's SWUDI: 0.65 everywhere)")

# %% [markdown]
# ## Explore
#
# Pick a layer, a rank rule and the scale-free time $\kappa = t N / d_{\text{in}}$. Left: the exponential,
# top-$K$ and SWUDI factors, drawn on a dense grid of $\lambda$ over the layer's spectrum (the ticks are its
# eigenvalues); right: the closed-form coefficients and the filtered ones, i.e. how much of the amplified
# tail each choice lets through. It opens on the layer of the figure above, SWUDI-A's default rule and $\kappa = 3$
# (the paper's IWUDI time $t = 300$ on ViT-B/32 is $\kappa = 3.125$).

# %%
import ipywidgets as widgets

# every rank rule's context per layer: ||D q_k||^2, ||theta0 q_k||^2, N d_out, d_out (S.rank_context)
contexts = {n: S.rank_context(p.taus, eig=p.eig, D=p.D) for n, p in problems.items()}
rhs = {n: c["rhs_energy"].cpu() for n, c in contexts.items()}  # ||D q_k||^2

def layer_figure(layer, rule, kappa):
    p = problems[layer]
    lam = p.eig.values.cpu()
    d = lam.numel()
    K = S.choose_rank(lam, rule, **contexts[layer])
    t = S.kappa_time(kappa, d, N)
    filters = {f"exponential(κ = {kappa:.3g})": S.exponential(t), f"top_k(K = {K}, {rule})": S.top_k(k=K),
               "swudi (exp × top-K)": S.swudi(t, k=K)}
    # on the spectrum: the exponential's shape across its gaps, top-K and SWUDI as steps at the eigenvalues
    left = viz.filter_factors_figure(filters, eigenvalues=lam, eigenvalues_name="of C", title="filter factors on the spectrum")
    right = viz.noise_amplification_figure(lam, rhs[layer].sqrt(), filters, title="coefficients ‖D q_k‖ f_k / λ_k")
    return viz.side_by_side([left, right], title=f"{short(layer)} (d_in = {d}): K = {K} ({rule}), "
                                                 f"κ = {kappa:.3g}, t = {t:.3g}")

layers = list(problems)
viz.explore(layer_figure, {
    "layer": widgets.Dropdown(options=layers, value=LAYER, description="layer"),
    "rule": widgets.Dropdown(options=list(S.RANK_RULES), value="participation_sqrt", description="rank rule"),
    "kappa": widgets.FloatLogSlider(value=3.0, base=10, min=-1, max=3, step=0.05, description="κ = t N / d_in",
                                    continuous_update=False, readout_format=".3g",
                                    style={"description_width": "initial"}),
}, fallback_grid={"layer": [n for n in layers if n.startswith(f"blocks.{last}.")], "kappa": [0.3, 3.0, 30.0]})

# %% [markdown]
# **Next:** [5 · End-to-end ViT merge](05_end_to_end_vit_merge.ipynb): merge the whole model with every
# method and score it on the 8 tasks.
