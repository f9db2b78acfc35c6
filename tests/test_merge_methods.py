"""Identities of the per-layer merge methods (swudi_lab.merge.methods)."""

import math

import pytest
import torch
from merge_helpers import task_stack

import swudi_lab  # noqa: F401
from swudi_lab.merge import METHODS, get_method, resolve_params
from swudi_lab.spectral import eigh, interference_operator, sum_init
from swudi_lab.spectral.iterative import gradient_descent
from swudi_lab.spectral.rank_rules import choose_rank

FAST = {"wudi": {"steps": 8}, "optmerge": {"steps": 8}, "filtered": {"filter": "tikhonov", "alpha": 1e-2}}


def run(name, taus, **params):
    m = get_method(name)
    return m.fn(taus, name="layer", **resolve_params(m, {**FAST.get(name, {}), **params}))


def test_closed_form_is_pseudoinverse_and_filtered_f1():
    taus = task_stack()
    C, D = interference_operator(taus)
    cf, info = run("closed_form", taus)
    f1, _ = run("filtered", taus, filter="pseudoinverse", alpha=None)
    torch.testing.assert_close(cf, D @ torch.linalg.pinv(C), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(cf, f1, rtol=1e-12, atol=1e-14)
    assert info["k"] == taus.shape[2] and info["loss_after"] <= info["loss_before"]


def test_swudi_ratio_one_large_t_is_closed_form():
    taus = task_stack()
    sw, info = run("swudi", taus, ratio=1.0, t=1e9)
    cf, _ = run("closed_form", taus)
    torch.testing.assert_close(sw, cf, rtol=1e-9, atol=1e-12)
    assert info["k"] == taus.shape[2]


def test_filtered_landweber_is_n_gd_steps():
    taus = task_stack(n=8, d_out=576, d_in=192, rank=8)  # a ViT-Ti qkv layer, 8 experts
    C, D = interference_operator(taus)
    eta, n = 1.0 / float(eigh(C).values[0]), 25
    got, info = run("filtered", taus, filter="landweber", eta=eta, n=n, alpha=None)
    gd = gradient_descent(C, D, sum_init(taus), eta=eta, steps=n).final
    torch.testing.assert_close(got, gd, rtol=1e-9, atol=1e-12)
    assert info["filter"].startswith("landweber")


def test_wudi_fast_path_equals_reference():
    taus = task_stack(n=3, d_out=20, d_in=12)
    fast, fi = run("wudi", taus, steps=15, lr=1e-3)
    ref, ri = run("wudi", taus, steps=15, lr=1e-3, reference=True)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-9)
    assert fi["solver"] == "fast" and ri["solver"] == "reference"
    assert fi["loss_after"] < fi["loss_before"]


def test_wudi_lr_rel_scales_with_task_vectors():
    taus = task_stack(n=3, d_out=20, d_in=12)
    _, info = run("wudi", taus, steps=2, lr_rel=0.1, lr=None)
    assert info["lr"] == pytest.approx(0.1 * float(taus.pow(2).mean().sqrt()))
    with pytest.raises(ValueError, match="only one of"):
        resolve_params("wudi", {"lr": 1e-5, "lr_rel": 0.1})


@pytest.mark.parametrize("name", list(METHODS))
def test_permuting_experts_leaves_result_unchanged(name):
    taus = task_stack(n=4)
    perm = torch.tensor([2, 0, 3, 1])
    a, _ = run(name, taus)
    b, _ = run(name, taus[perm])
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", list(METHODS))
def test_zero_delta_expert_gives_finite_result(name):
    taus = task_stack(n=3)
    taus[1] = 0
    out, _ = run(name, taus)
    assert torch.isfinite(out).all()
    zero, _ = run(name, torch.zeros_like(taus))
    assert torch.isfinite(zero).all() and zero.abs().max() == 0


@pytest.mark.parametrize("name", [m for m in METHODS if METHODS[m].spectral])
def test_spectral_methods_ignore_zero_experts(name):
    """A zero task vector drops out of C, D and the sum init: same 2-D result as without it."""
    taus = task_stack(n=3)
    with_zero = torch.cat([taus, torch.zeros_like(taus[:1])])
    a, _ = run(name, taus)
    b, _ = run(name, with_zero)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", [m for m in METHODS if METHODS[m].spectral])
@pytest.mark.parametrize("shape", [(24, 16), (8, 16)])  # C full rank / rank-deficient
def test_one_expert_returns_the_expert(name, shape):
    """tau is the exact minimizer of its own loss (D = tau C), so theta = tau.

    Adam (``wudi``) only jitters around it: where |grad| << eps it acts like GD with step
    lr / eps, which is unstable, until |grad| ~ eps; each step moves at most ~lr.
    """
    taus = task_stack(n=1, d_out=shape[0], d_in=shape[1])
    out, info = run(name, taus)
    atol = FAST["wudi"]["steps"] * 1e-5 if name == "wudi" else 1e-7
    torch.testing.assert_close(out, taus[0], rtol=1e-6, atol=atol)
    assert info["n_live"] == 1


@pytest.mark.parametrize("name", ["closed_form", "swudi_a"])
def test_one_expert_in_float32_with_rank_deficient_C(name):
    """float32, d_in > d_out: C has a null space whose computed eigenvalues are round-off
    (|lambda| ~ eps lambda_max, some negative). A pseudoinverse that divided by them (or by the
    1e-8 floor) would add D q_k / lambda_k ~ 1e7 * round-off; the numerical-rank tolerance drops them."""
    taus = task_stack(n=1, d_out=32, d_in=64, dtype=torch.float32)
    out, _ = run(name, taus)
    assert (out - taus[0]).norm() / taus[0].norm() < 1e-3


def test_kappa_sets_t_per_layer():
    taus = task_stack(n=4, d_out=24, d_in=16)
    by_kappa, info = run("iwudi", taus, kappa=3.0, t=None)
    by_t, _ = run("iwudi", taus, t=3.0 * 16 / 4)
    torch.testing.assert_close(by_kappa, by_t)
    assert info["t"] == pytest.approx(12.0) and info["kappa"] == pytest.approx(3.0)
    _, sw = run("swudi", taus)
    assert sw["kappa"] == pytest.approx(1300 * 4 / 16)
    assert sw["k"] == math.ceil(0.65 * 16)


def test_swudi_a_uses_choose_rank():
    taus = task_stack(n=4, d_out=24, d_in=16)
    C, D = interference_operator(taus)
    lam, V = eigh(C)
    K = choose_rank(lam, "participation_sqrt", rhs_energy=(D @ V).pow(2).sum(0), n_rows=96, d_out=24)
    out, info = run("swudi_a", taus)
    assert info["k"] == K and info["filter"] == f"top_k(k={K})"
    _, capped = run("swudi_a", taus, rank_rule="cumvar_0.99", max_rank_ratio=0.25)
    assert capped["k"] <= 4


def test_ties_properties():
    taus = task_stack(n=3, dtype=torch.float32)
    ta, _ = run("task_arithmetic", taus, scale=0.5)
    torch.testing.assert_close(ta, 0.5 * taus.sum(0))
    # density 1, all signs agree -> mean of the experts times scale
    pos = taus.abs()
    out, _ = run("ties", pos, density=1.0, scale=1.0)
    torch.testing.assert_close(out, pos.mean(0))
    # one expert: its top-density entries, scaled
    one, _ = run("ties", taus[:1], density=0.25, scale=1.0)
    kept = one != 0
    assert kept.sum() == math.ceil(0.25 * taus[0].numel())
    assert (taus[0].abs()[kept].min() >= taus[0].abs()[~kept].max())
    # disjoint mean: entries of the minority sign are dropped
    x = torch.tensor([[1.0, -2.0], [3.0, -1.0], [-1.0, 4.0]])
    out, _ = run("ties", x, density=1.0, scale=1.0)
    torch.testing.assert_close(out, torch.tensor([2.0, 4.0]))
