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
# # 3 · Filters and rank rules
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/swudi-lab/swudi_lab/blob/main/notebooks/03_filters_and_rank_rules.ipynb)
#
# **The claim.** Once the optimizer is recognized as a filter, we can choose the filter directly, and
# choose its parameter without knowing the truth. On the shaw problem every filter family at its best
# parameter lands within 5 to 7 % of the truth (*where* a filter cuts matters far more than *how*), and
# the rules that see only the data (GCV, the discrepancy principle, the L-curve) stay within a factor 3
# of the error of the oracle, which knows the truth; the L-curve below shows where each rule picks. For SWUDI-A's rank, the default
# rule reads the gap of a spectrum when it has one, and adapts to the decay when it has not.
#
# * **Tikhonov vs exponential vs top-$K$ vs SWUDI** ($(1 - e^{-\lambda t})$ times a top-$K$ cut) on one problem;
# * choosing the parameter from data: the **L-curve**, **GCV** and the **discrepancy principle**,
#   against the **oracle** that knows $x_{\text{true}}$;
# * **SWUDI-A's rank rules**: how many eigen-directions to keep, read off the spectrum alone, on
#   spectra of different shapes;
# * **the rules side by side on the zoo's layers**: the rank each rule keeps per layer type of a real
#   ViT merge, and the accuracy of the main ones.

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
# ## One problem, four families
#
# The `shaw` problem of notebook 1 with 0.1 % noise. `swudi_lab.toy.run_toy_demo` solves it with every
# filter family and every parameter-choice rule; grids are relative to $\lambda_1 = \sigma_1^2$.

# %%
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

# %%
import plotly.graph_objects as go

table = {}
for r in rows[1:]:
    table.setdefault(r["filter"], {})[r["rule"]] = r["error"]
rules = ["oracle", "gcv", "l_curve", "discrepancy"]
fig = go.Figure([go.Bar(name=rule, x=list(table), y=[table[f].get(rule, np.nan) for f in table],
                        marker_color=viz.color(rule)) for rule in rules])
fig.update_layout(template=viz.TEMPLATE, barmode="group", yaxis_type="log",
                  title=f"Relative error by filter and parameter rule (pseudoinverse: {rows[0]['error']:.2g})",
                  yaxis_title="‖x − x_true‖ / ‖x_true‖")
missing = [f for f in table if "l_curve" not in table[f]]
if missing:  # the L-curve needs a one-parameter family; SWUDI has two (t and K)
    fig.add_annotation(text=f"no L-curve bar for {', '.join(missing)}: the L-curve needs a one-parameter family",
                       xref="paper", yref="paper", x=1, y=1.0, xanchor="right", yanchor="bottom", showarrow=False,
                       font=dict(size=11, color="#555"))
fig

# %% [markdown]
# At their best parameters the families are within a few percent of each other (the next cell prints
# the range): on a problem with a clear noise floor, *where* a filter cuts matters far more than *how*
# it cuts. SWUDI's product of a soft and a hard cut contains both its parts ($t \to \infty$ gives top-$K$,
# $K = n$ the exponential), and here it does no worse than either.
#
# ## Choosing the parameter: L-curve, GCV, discrepancy
#
# With $x_\alpha$ the Tikhonov solution, $\beta = U^\top b$ and $f_k = f(\sigma_k^2)$:
#
# * **L-curve**: plot $\log \|A x_\alpha - b\|$ against $\log \|x_\alpha\|$; the corner (maximum
#   curvature) balances fitting the data and blowing up the solution.
# * **GCV**: minimize $G(\alpha) = \|A x_\alpha - b\|^2 / \bigl(m - \sum_k f_k\bigr)^2$ (leave-one-out
#   prediction error, in closed form).
# * **Discrepancy principle**: the most regularized $\alpha$ with $\|A x_\alpha - b\| \le \|e\|$ (needs
#   the noise norm).
# * **Oracle**: $\arg\min_\alpha \|x_\alpha - x_{\text{true}}\|$ (needs the truth: the best any rule could do).

# %% tags=["hero"]
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

# %%
G = picks["GCV"].criterion.numpy()
err = picks["oracle"].criterion.numpy() / float(x_true.norm())
viz.side_by_side([
    viz.error_curve_figure({"GCV function G(alpha)": (c0.params, G)}, x_title="alpha", y_title="G(alpha)",
                           log_y=True, title="GCV function"),
    viz.error_curve_figure({"relative error (oracle)": (c0.params, err)}, x_title="alpha",
                           y_title="||x_alpha - x_true|| / ||x_true||", log_y=True, title="true error"),
], title="GCV's minimum sits next to the true error's minimum")

# %% [markdown]
# The checks: the families' best errors lie within 5 to 7 %, SWUDI does no worse than its parts, and
# every data-driven rule lands within a factor 3 of the oracle's error, for every one-parameter family
# of the table above.

# %%
for family, errs in table.items():
    for rule in ("gcv", "l_curve", "discrepancy"):
        if rule in errs:
            assert errs[rule] <= 3 * errs["oracle"], (family, rule, errs)
oracle = {family: errs["oracle"] for family, errs in table.items()}
print(f"best errors of the families: {min(oracle.values()):.3g} to {max(oracle.values()):.3g}")
assert 0.05 <= min(oracle.values()) and max(oracle.values()) <= 0.07, oracle
assert oracle["swudi"] <= min(oracle["exponential"], oracle["top_k"]) * (1 + 1e-6), oracle
best = min(oracle.values())
assert best * 10 <= rows[0]["error"], "the best filter beats the pseudoinverse by >= 10x"
print(f"all rules within 3x of the oracle; best filter {best:.3g} vs pseudoinverse {rows[0]['error']:.3g}")

# %% [markdown]
# ## SWUDI-A: the rank from the spectrum
#
# SWUDI-A keeps the $K$ largest eigen-directions of $C$ ($f = 1$) and drops the rest, with $K$ chosen per
# layer from the spectrum: by default the **participation ratio of $\sqrt{\lambda}$**,
#
# $$K = \Bigl\lceil \frac{\bigl(\sum_k \sqrt{\lambda_k}\bigr)^2}{\sum_k \lambda_k} \Bigr\rceil$$
#
# (no global rank knob). `swudi_lab.spectral.choose_rank` implements it and its siblings (`RANK_RULES`):
# the authors' rules under their names (participation ratios, stable rank
# $\sum_k \lambda_k^2 / \lambda_1^2$, entropies of $\lambda$ and $\lambda^2$, cumulative variance, the
# D-aware rules on $e_k = \|D q_k\|^2 / \lambda_k^2$, the loss-based `loss_elbow` and `wudi_risk`, their
# Gavish-Donoho approximation), Gavish and Donoho's textbook optimal hard threshold `gavish_donoho`, and a
# few variants of swudi_lab's own under distinct names (`entropy_sv`, `stable_rank_sv`, `loss_kneedle`,
# `wudi_risk_scalefree`). Some rules read more than the spectrum: $\|D q_k\|^2$, the start's energy
# $\|\theta_0 q_k\|^2$ and the shapes; `S.rank_context` gives them for a layer.
#
# We try the rules on four spectra with $\operatorname{tr}(C) = N = 8$ and $d_{\text{in}} = 256$:
#
# * **merge-like**: $C$ of 8 random rank-8 task vectors plus 5 % dense noise (`toy.merge_like_operator`):
#   64 signal directions and a noise floor;
# * **cliff**: 64 flat eigenvalues, then a drop by a factor $10^{-3}$;
# * **polynomial**: $\lambda_k \propto k^{-2}$ (a heavy head: few directions carry most of the trace);
# * **exponential**: $\lambda_k \propto e^{-0.1 k}$ (a steady decay over the first ~100 directions).
#
# The rules disagree most where the spectrum has no clear gap; the default sits near the gap when
# there is one (cliff, merge-like) and adapts to the decay when there is not.

# %%
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
context = S.rank_context(op.taus, eig=S.Eig(op.lam, op.Q), D=op.D)  # the merge-like layer has it all
SPECTRUM_ONLY = [r for r, rule in S.RANK_RULES.items() if not rule.needs]
ranks = {name: {r: S.choose_rank(s, r) for r in SPECTRUM_ONLY} for name, s in spectra.items()}
ranks["merge-like"] = {r: S.choose_rank(spectra["merge-like"], r, **context) for r in S.RANK_RULES}
print(f"{'rule':<28s}" + "".join(f"{name:>13s}" for name in spectra))
for r in S.RANK_RULES:
    print(f"{r:<28s}" + "".join(f"{ranks[name].get(r, '-'):>13}" for name in spectra))

# %%
viz.spectra_figure({k: v for k, v in spectra.items()}, normalize=True,
                   ranks={name: {"participation_sqrt": ranks[name]["participation_sqrt"]} for name in spectra},
                   title="Normalized spectra λ_k d_in / N and the rank SWUDI-A keeps (participation of √λ)")

# %%
K_default = {name: r["participation_sqrt"] for name, r in ranks.items()}
assert all(1 <= K <= d for r in ranks.values() for K in r.values())
assert 32 <= K_default["cliff"] <= 128, "the default rule finds the cliff at k = 64 (within 2x)"
assert 32 <= K_default["merge-like"] <= 128, "on the merge-like spectrum it finds the 64 signal directions (within 2x)"
assert len(set(K_default.values())) == len(K_default), "the rank adapts to the spectrum"
print("SWUDI-A default ranks:", K_default)

# %% [markdown]
# ## Explore
#
# Filters and rank rules on the merge-like spectrum. The controls: the scale-free time
# $\kappa = t N / d_{\text{in}}$ (so $t = \kappa / \operatorname{mean}(\lambda)$), SWUDI's ratio $r$
# ($K = \lceil r\, d_{\text{in}} \rceil$ for the SWUDI filter), and a dropdown of rank rules for the $K$
# of the top-$K$ filter (SWUDI-A's). Left: the factors of the exponential, top-$K$ and SWUDI filters,
# drawn on a dense grid of $\lambda$ (the exponential's shape across the spectrum's gaps; the ticks are
# the eigenvalues); right: the spectrum with both $K$ marked. It opens at the paper's SWUDI setting for
# CLIP ViT-B/32 ($t = 1300$ with $d_{\text{in}} = 768$, $N = 8$: $\kappa \approx 13.5$; $r = 0.65$) and
# SWUDI-A's default rule.

# %%
KAPPA_PAPER = S.time_kappa(1300, 768, 8)  # the paper's SWUDI time on CLIP ViT-B/32, scale-free
print(f"kappa = t N / d_in = 1300 * 8 / 768 = {KAPPA_PAPER:.3g}")
viz.filters_explorer(spectra["merge-like"], n_tasks=N, kappa=KAPPA_PAPER, ratio=0.65, rule="participation_sqrt",
                     **context)

# %% [markdown]
# ## The rules side by side on the zoo's layers
#
# The offline zoo of notebook 5 (a small timm ViT, eight tasks, eight fine-tuned experts): every rule on
# every merged 2-D layer, with the layer's full context. The table gives $K / d_{\text{in}}$ per layer
# type (mean over the four blocks); the accuracy below merges the zoo with SWUDI-A for a few main rules,
# on the first `N_TEST` test images of each task (`benchmarks/rank_rules.py` runs every main rule on the
# whole test splits; the README lists its numbers).

# %%
from swudi_lab import evaluate as E
from swudi_lab.merge import iter_layer_problems, merge
from swudi_lab.zoo import load_zoo

zoo = load_zoo(seed=0)
base = zoo.base_state_dict()
experts = {task: zoo.expert_state_dict(task) for task in zoo.tasks}
kinds = viz.LAYER_TYPES
zoo_ranks = {r: {k: [] for k in kinds} for r in S.RANK_RULES}
for p in iter_layer_problems(base, experts, device=DEVICE):
    kind = next(k for k in kinds if f".{k}." in p.name)
    ctx = S.rank_context(p.taus, eig=p.eig, D=p.D)
    for r in S.RANK_RULES:
        zoo_ranks[r][kind].append(S.choose_rank(p.eig.values, r, **ctx) / p.C.shape[0])
share = {r: {k: float(np.mean(v)) for k, v in per_kind.items()} for r, per_kind in zoo_ranks.items()}
print(f"{'K / d_in':<28s}" + "".join(f"{k:>7s}" for k in kinds))
for r, per_kind in share.items():
    print(f"{r:<28s}" + "".join(f"{per_kind[k]:7.2f}" for k in kinds))

# %%
fig = go.Figure(go.Heatmap(z=[[share[r][k] for k in kinds] for r in share], x=list(kinds), y=list(share),
                           zmin=0, zmax=1, colorscale="Viridis", colorbar_title="K / d_in",
                           text=[[f"{share[r][k]:.2f}" for k in kinds] for r in share], texttemplate="%{text}"))
fig.update_layout(template=viz.TEMPLATE, height=720, yaxis_autorange="reversed",
                  title="Share of directions each rank rule keeps, per layer type (zoo, seed 0)")
fig

# %%
assert all(0 < v <= 1 for per_kind in share.values() for v in per_kind.values())
assert all(v == 1 for v in share["none"].values())
# the authors' stable rank (of C) keeps fewer directions than the stable rank of the task matrix,
# and the entropy of lambda fewer than that of sqrt(lambda)
assert all(share["stable_rank"][k] <= share["stable_rank_sv"][k] for k in kinds)
assert all(share["entropy"][k] <= share["entropy_sv"][k] for k in kinds)
# fc2 (d_in = 512, the hidden layer's input) keeps the smallest share under the default rule
assert min(share["participation_sqrt"], key=share["participation_sqrt"].get) == "fc2"

# %% [markdown]
# Accuracy of the SWUDI-A merges for the main rules (`none` keeps every direction: the closed form), through
# the fixed task heads. On a CPU, `N_TEST` images per task keep this cell under a minute.

# %%
N_TEST = None if DEVICE == "cuda" else 200
data = zoo.test_data(max_per_task=N_TEST)
base_acc = E.evaluate_backbone(base, zoo, data, device=DEVICE)
MAIN = ["participation_sqrt", "entropy", "gavish_donoho", "wudi_risk", "none"]
accuracy = {}
for r in MAIN:
    merged = merge(base, experts, "swudi_a", rank_rule=r, device=DEVICE, progress=False)
    accuracy[r] = E.average_accuracy(E.evaluate_backbone(merged.state_dict, zoo, data, device=DEVICE))
print(f"{sum(len(y) for _, y in data.values())} test images; base with heads {E.average_accuracy(base_acc):.1f} %")
for r in MAIN:
    label = f"swudi_a ({r})"
    print(f"{label:<30s} keeps {np.mean(list(share[r].values())):.2f} of the directions: {accuracy[r]:.1f} %")

# %%
assert all(a > E.average_accuracy(base_acc) + 10 for a in accuracy.values()), "every merge beats the base"
viz.accuracy_bar_figure({f"swudi_a ({r})": a for r, a in accuracy.items()}, base=E.average_accuracy(base_acc),
                        title="SWUDI-A on the zoo, by rank rule")

# %% [markdown]
# **Next:** [4 · Merging is an inverse problem](04_merging_is_an_inverse_problem.ipynb): the same
# spectra, filters and rank rules on real task vectors of a ViT.
