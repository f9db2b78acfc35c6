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
# # 5 · End-to-end ViT merge
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/swudi-lab/swudi_lab/blob/main/notebooks/05_end_to_end_vit_merge.ipynb)
#
# Merge 8 ViT experts into one model with every method of the registry and score it the way the
# merging literature does: each task with its own head, on its own test split.
#
# * **Offline (default, CPU):** the shipped zoo (a small timm ViT, 8 procedural tasks).
# * **Online (Colab with a GPU):** a hub-pretrained timm ViT (`vit_small_patch16_224`) fine-tuned on
#   torchvision datasets (MNIST, SVHN, EuroSAT, GTSRB, DTD, CIFAR-10) by the same zoo pipeline.
#
# The output: the method table (average and normalized accuracy, merge time), a per-task heatmap and
# an explorer of accuracy over SWUDI's two knobs, the time `kappa` and the ratio `r`.

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
# ## The experts
#
# The **offline zoo** (`swudi_lab.zoo`): a small timm ViT (patch 4, width 128, 4 blocks) pretrained on
# procedural 32 × 32 images, and 8 experts, each fine-tuned on one task (letters, shapes, orientation,
# counting, photo textures, flags, patterns, colour) with a fixed prototype head. Seed 0 ships with the
# repository; `load_zoo` verifies every file's sha256.
#
# On a GPU in Colab the cell below builds the online zoo instead (downloads, fine-tuning: about 10-20
# minutes once; cached afterwards). Set `RECIPE` by hand to choose.

# %%
from swudi_lab import evaluate as E
from swudi_lab.merge import merge
from swudi_lab.merge.sweep import filter_sweep
from swudi_lab.spectral import kappa_time
from swudi_lab.zoo import build_zoo, load_zoo

RECIPE = "hub" if (viz.in_colab() and DEVICE == "cuda") else "zoo"
if DEVICE == "cpu":
    torch.set_num_threads(1)  # small ViT: one thread is fastest on a shared CPU
if RECIPE == "hub":  # online: hub-pretrained timm ViT + torchvision datasets (needs internet and a GPU)
    from swudi_lab.zoo import online
    config = online.online_config("vit_small_patch16_224", n_train=2000, n_test=500, steps=300)
    zoo = build_zoo("/content/zoo_online", seed=0, config=config, device=DEVICE)
else:
    zoo = load_zoo(seed=0)
base = zoo.base_state_dict()
experts = {task: zoo.expert_state_dict(task) for task in zoo.tasks}
print(zoo)

# %% [markdown]
# **Test images.** On a CPU we score on the first `N_TEST` test images of each task so that the whole
# notebook runs in about a minute (each merged model is one pass over `8 × N_TEST` images); on a GPU,
# on the full test splits. Every row of the table uses the same images. For the full numbers over three
# expert seeds, run `make demo`.

# %%
N_TEST = None if DEVICE == "cuda" else 100
data = zoo.test_data(max_per_task=N_TEST)
score = lambda state: E.evaluate_backbone(state, zoo, data, device=DEVICE)
expert_acc = {t: E.evaluate_backbone(experts[t], zoo, {t: data[t]}, device=DEVICE)[t] for t in zoo.tasks}
base_acc = score(base)
print(f"{sum(len(y) for _, y in data.values())} test images; base with heads {E.average_accuracy(base_acc):.1f}%, "
      f"experts on their own task {E.average_accuracy(expert_acc):.1f}%")

# %% [markdown]
# ## Every method
#
# From `swudi_lab.merge.METHODS`: the baselines (average, task arithmetic, TIES), WUDI (Adam, 300
# steps, sum init), its closed form `D C^+`, SWUDI and SWUDI-A (the exponential filter alone, `iwudi`,
# is SWUDI with `r = 1`: it appears in the sweep further down). The spectral
# times are shown at the paper's values (`t = 1300` for SWUDI, tuned on CLIP ViT-B/32 with
# `d_in = 768`) and **scale-matched** through `kappa = t N / d_in` (docs/design.md, "Scale"): the same
# `kappa` as the paper's layers, i.e. `t = kappa d_in / N` per layer. WUDI's learning rate is likewise
# shown at the paper's `lr = 1e-5` and scale-matched: Adam moves each entry by about `lr` per step, so
# `lr = lr_rel * RMS(tau)` per layer, with `lr_rel = 0.038` chosen once on this zoo with
# `swudi_lab.demo.calibrate_wudi_lr` so that 300 Adam steps act like the exponential filter at the
# paper's `kappa ~ 3` (the task vectors here have entries of about `1.6e-3` RMS, so `lr = 1e-5` acts
# like `kappa ~ 0.1`: WUDI barely leaves its sum init).

# %%
from swudi_lab.config import PAPER, ZOO_MATCHED  # the paper's settings, and scale-matched to this zoo

KAPPA_SWUDI = ZOO_MATCHED.params("swudi")["kappa"]
RUNS = {  # label: (registry method, parameters)
    "average": ("average", {}),
    "task arithmetic": ("task_arithmetic", PAPER.params("task_arithmetic")),
    "ties": ("ties", PAPER.params("ties")),
    "wudi (lr 1e-5)": ("wudi", PAPER.params("wudi")),
    f"wudi (lr_rel {ZOO_MATCHED.params('wudi')['lr_rel']:g})": ("wudi", ZOO_MATCHED.params("wudi")),
    "closed form": ("closed_form", {}),
    "swudi (t 1300, r 0.65)": ("swudi", PAPER.params("swudi")),
    f"swudi (kappa {KAPPA_SWUDI:.3g}, r 0.65)": ("swudi", ZOO_MATCHED.params("swudi")),
    "swudi_a": ("swudi_a", PAPER.params("swudi_a")),
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

# %% tags=["hero"]
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

# %%
fig = viz.task_heatmap_figure({"experts (own task)": expert_acc, **table, "base with heads": base_acc},
                              title="Accuracy per task (%): which tasks survive the merge")
fig.update_layout(margin=dict(l=200))  # room for the method labels

# %% [markdown]
# **What to look at.** WUDI at the paper's `lr = 1e-5` barely leaves its start, the plain sum of the
# task vectors (task arithmetic scales that sum by 0.3): on this zoo the task-vector entries are about
# `1.6e-3`, so the absolute learning rate is far too small; scale-matched it behaves like the spectral
# methods. Those take about a second for the whole model (notebook 6). Differences of a point or two
# between methods are within the noise of `8 × N_TEST` test images; `make demo` reports three expert
# seeds on the full test sets. Expect a merge of all eight tasks to keep less than half of the
# experts' gain: eight tasks on a 0.8 M-parameter ViT leave a merge less room than CLIP's 88 M, and
# the filters cannot remove interference that the normal equation itself contains.
# `benchmarks/merge_regime.py` measures it (three expert seeds): with two tasks the filters and the
# closed form keep about 82 % of the gain and averaging 64 %; with eight, the filters keep 43-44 %,
# the closed form 41 % and averaging or task arithmetic about 22 %: the paper's ordering. The README
# discusses what that means for the paper's claims.

# %% [markdown]
# ## How far the experts are from weight disentanglement
#
# Merging works when the experts are *weight-disentangled* (Ortiz-Jiménez et al., NeurIPS 2023):
# adding one expert's task vector `tau_s` leaves every other task's outputs alone, and a fraction of
# `tau_t` already gives most of task t's gain. Two diagnostics from `swudi_lab.evaluate` test both,
# one expert at a time, before any merge:
#
# * `own_response`: task t's accuracy at `theta0 + alpha tau_t`. Averaging keeps `1/N` of each task
#   vector, so the share of the gain at `alpha = 1/N` is the most it can keep even without interference.
#   CLIP's fine-tuned experts overshoot (a fraction of `tau_t` already does most of the job); if the
#   response is linear, `1/8` of `tau_t` gives about an eighth of the gain.
# * `cross_effect`: `acc_t(theta0 + tau_s) - acc_t(theta0)` for every pair. The diagonal is each
#   expert's gain; off the diagonal, what one expert alone does to the other tasks: 0 for
#   disentangled experts, negative where `tau_s` damages task t.
#
# Neither is about a merge method: they tell how much room a zoo leaves to all of them. (On the full
# test splits of three expert seeds, `make demo` measures 22 % of the gain at `alpha = 1/8`, an
# off-diagonal mean of about -9.5 points, and colour's task vector costing the other tasks 26 points
# on average and up to 51.)

# %%
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

# %% [markdown]
# **Reading the matrix.** Rows are the expert added, columns the task scored. A weight-disentangled zoo
# would show its gains on the diagonal and pale cells elsewhere; here many off-diagonal cells are red,
# colour's row the deepest, while letters' and patterns' rows stay pale. Each of those experts alone
# already takes points from the other tasks, and a merge of all eight adds the damage of seven
# experts to each task: that is why no method keeps more than about half of the experts' gain. The
# levers are the model's, not the merge's: a longer pretraining on more images made experts that add
# up far better (the README compares three bases: merges of all eight kept 5-9 % of the gain on the
# second and keep 41-47 % on this one).

# %% [markdown]
# ## What a merge loses: the features, or their alignment with the heads?
#
# A fixed head reads a backbone only along the directions of its prototypes. A **linear probe**
# fitted on the backbone's own features of a task reads whatever they hold:
# `E.probe_accuracy` fits a ridge (Tikhonov) least-squares classifier in closed form on training
# images and scores it on the test images. It uses task data, so it is a diagnostic, never a merge.
# If a merged backbone reads well through probes and badly through the heads, the merge kept what the
# experts learned and lost their alignment with the heads.

# %%
train = {t: tuple(a[:300] for a in zoo.train_data(t)) for t in zoo.tasks}  # 300 training images per task (CPU time)
swudi_label = f"swudi (kappa {KAPPA_SWUDI:.3g}, r 0.65)"  # merged and scored above
heads = {"base": base_acc, "swudi": table[swudi_label]}
probe = {"base": E.probe_accuracy(base, zoo, train, data, device=DEVICE),
         "swudi": E.probe_accuracy(states[swudi_label], zoo, train, data, device=DEVICE)}
for name in heads:
    print(f"{name:6s} heads {E.average_accuracy(heads[name]):5.1f} %   probes {E.average_accuracy(probe[name]):5.1f} %")
print(f"experts on their own task, through the heads: {E.average_accuracy(expert_acc):.1f} %")
assert E.average_accuracy(probe["base"]) > E.average_accuracy(base_acc)  # the base's features hold more than its heads read

# %% [markdown]
# **Reading it.** The base's features already hold more of every task than the prototype heads
# read: part of the experts' gain is alignment of the features with the fixed heads (the experts
# themselves read about as well through their heads as through probes). The merged backbone gains
# over the base both ways. Turning that into shares of the experts' gain needs the experts' probes
# too: `benchmarks/merge_regime.py --probe` fits them (on all 4000 training images, stronger probes
# than these 300-image ones) and scores the whole test splits. Over three expert seeds the filters
# keep 54-56 % of the probes' gain and 43-44 % through the heads: about half of what the experts
# learned survives in the merged features, and the heads read most of what survives.

# %% [markdown]
# ## SWUDI's two knobs: `kappa` and `r`
#
# `swudi_lab.merge.sweep.filter_sweep` decomposes every layer once and evaluates the estimator for a
# whole grid of filters: here SWUDI at three scale-free times `kappa` and two ratios `r`
# (`K = ceil(r d_in)`; `r = 1` keeps every direction: the exponential filter alone). Each grid point is
# then scored; the explorer shows accuracy against `kappa` at the chosen `r` and against `r` at the
# chosen `kappa`. (A finer grid is one line away; on a CPU each point costs one pass over the test
# images.)

# %%
from swudi_lab.spectral import swudi

KAPPAS, RATIOS = (1.0, KAPPA_SWUDI, 100.0), (0.65, 1.0)  # r = 1: the exponential filter (iwudi)
grid = {(KAPPA_SWUDI, 0.65): table[f"swudi (kappa {KAPPA_SWUDI:.3g}, r 0.65)"]}  # scored above
rules = {f"{k:g},{r:g}": (lambda d_in, n_live, k=k, r=r: swudi(kappa_time(k, d_in, n_live), ratio=r))
         for k in KAPPAS for r in RATIOS if (k, r) not in grid}  # per layer: t = kappa d_in / N
merged = filter_sweep(base, experts, rules, device=DEVICE)
grid.update({(k, r): score(merged[f"{k:g},{r:g}"]) for k in KAPPAS for r in RATIOS if (k, r) not in grid})
refs = {"closed form": avg["closed form"], "wudi (lr 1e-5)": avg["wudi (lr 1e-5)"]}
viz.merge_explorer(grid, references=refs, per_task=False)

# %% [markdown]
# **Next:** [6 · Speed and memory](06_speed_and_memory.ipynb): what one eigendecomposition saves
# against 300 optimizer steps.
