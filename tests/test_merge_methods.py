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


# ----------------------------------------------------------------------------- the per-layer cost model (issue 21)


def _direct_operator(taus):
    """C, D and L(0) by their definitions, one expert at a time (float64 reference)."""
    C = sum(t.T @ t / t.pow(2).sum() for t in taus if t.pow(2).sum() > 0)
    D = sum(t @ t.T @ t / t.pow(2).sum() for t in taus if t.pow(2).sum() > 0)
    L0 = sum(float((t.T @ t).pow(2).sum() / t.pow(2).sum()) for t in taus if t.pow(2).sum() > 0)
    return C, D, L0


@pytest.mark.parametrize("shape", [(24, 16), (16, 24), (12, 12)])
def test_layer_operator_is_the_definition(shape):
    """Both associations of D (d_in <= d_out, d_in > d_out), an untouched expert skipped, L(0) from the
    same Gram matrices, theta0 stacked below D."""
    from swudi_lab.spectral import layer_operator, loss_constant

    taus = task_stack(n=4, d_out=shape[0], d_in=shape[1])
    taus[2] = 0
    op = layer_operator(taus, start=True)
    C, D, L0 = _direct_operator(taus)
    torch.testing.assert_close(op.C, C, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(op.D, D, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(op.theta0, taus.sum(0), rtol=0, atol=0)
    assert op.n_live == 3 and op.const == pytest.approx(L0, rel=1e-12) == pytest.approx(loss_constant(taus), rel=1e-12)
    assert op.rhs.shape == (2 * shape[0], shape[1]) and layer_operator(taus).theta0 is None


def test_layer_operator_names_the_expert_with_nan():
    from swudi_lab.spectral import layer_operator

    taus = task_stack(n=3)
    taus[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"expert\(s\) \[1\] contain NaN or Inf"):
        layer_operator(taus)


def _filters_for(d):
    from swudi_lab.merge.methods import _direction_filter
    from swudi_lab.spectral import exponential, pseudoinverse, swudi, tikhonov, top_k, wiener, zero

    scattered = _direction_filter("scattered", {}, (torch.arange(d) % 3 != 1).double())  # not a prefix
    return [pseudoinverse(), exponential(50.0), tikhonov(1e-2), top_k(k=d // 2), swudi(300.0, k=d - 3),
            wiener(2.0, 1e-4) * top_k(k=5), exponential(20.0) * scattered, zero()]


@pytest.mark.parametrize("shape", [(24, 16), (10, 40)])  # full-rank C, and rank-deficient C (N d_out < d_in)
@pytest.mark.parametrize("init", ["sum", "zero"])
def test_eigenbasis_estimate_and_losses_equal_the_direct_formulas(shape, init):
    """theta_f over the kept columns equals the old dense form theta0 (I - V F V^T) + D V diag(f/lambda) V^T, and
    the proxy losses read from the eigenbasis equal tr(theta C theta^T) - 2 tr(theta D^T) (float64)."""
    from swudi_lab.spectral import eigenbasis_estimate, filter_factors, layer_operator, numerical_rank_tolerance
    from swudi_lab.spectral.wudi import quadratic_loss

    taus = task_stack(n=3, d_out=shape[0], d_in=shape[1])
    op = layer_operator(taus, start=init == "sum")
    lam, V = eigh(op.C)
    theta0 = op.theta0 if init == "sum" else torch.zeros_like(op.D)
    for filt in _filters_for(shape[1]):
        f, o = filter_factors(filt, lam, numerical_rank_tolerance(lam))
        torch.testing.assert_close(f, filt(lam), rtol=0, atol=0)
        torch.testing.assert_close(o, filt.over_lambda(lam, numerical_rank_tolerance(lam)), rtol=0, atol=0)
        dense = theta0 - theta0 @ V @ torch.diag(f) @ V.T + op.D @ V @ torch.diag(o) @ V.T
        for projections in (None, op.rhs @ V):
            est = eigenbasis_estimate(lam, V, op.rhs, shape[0], f, o, projections=projections, losses=True)
            torch.testing.assert_close(est.theta, dense, rtol=1e-10, atol=1e-13)
            scale = abs(op.const)
            assert est.quad_before == pytest.approx(quadratic_loss(theta0, op.C, op.D), rel=1e-10, abs=1e-12 * scale)
            assert est.quad_after == pytest.approx(quadratic_loss(est.theta, op.C, op.D), rel=1e-10, abs=1e-12 * scale)
            assert est.k == int((f != 0).sum())


@pytest.mark.parametrize("name, params", [
    ("closed_form", {}), ("iwudi", {}), ("swudi", {}), ("swudi", {"consensus_power": 1.0, "consensus_floor": 0.3}),
    ("swudi", {"output_exp_time": 30.0}), ("swudi", {"init": "zero"}), ("swudi_a", {}),
    ("swudi_a", {"rank_rule": "loss_elbow_0.99"}), ("swudi_a", {"rank_rule": "loss_kneedle"}),
    ("filtered", {"filter": "landweber", "eta": 1e-2, "n": 5, "alpha": None}),
])
@pytest.mark.parametrize("shape", [(24, 16), (16, 40)])
def test_reported_losses_are_the_proxy_loss(name, params, shape):
    """The report's loss_before / loss_after (from the eigenbasis) equal the explicit per-expert WUDI loss."""
    from swudi_lab.spectral import wudi_loss

    taus = task_stack(n=4, d_out=shape[0], d_in=shape[1])
    delta, info = run(name, taus, **params)
    theta0 = torch.zeros_like(taus[0]) if params.get("init") == "zero" else taus.sum(0)
    assert info["loss_before"] == pytest.approx(float(wudi_loss(theta0, taus)), rel=1e-9)
    assert info["loss_after"] == pytest.approx(float(wudi_loss(delta, taus)), rel=1e-9)
    assert info["k"] >= 1


SUBSPACE_RUNS = [
    ("closed_form", {}), ("closed_form", {"init": "zero"}), ("iwudi", {}), ("iwudi", {"kappa": 3.0}),
    ("swudi", {}), ("swudi", {"k": 7}), ("swudi", {"filter_type": "none"}), ("swudi", {"init": "zero"}),
    ("swudi", {"alignment_rho": 0.5, "alignment_ref": 0.3, "filter_gamma": 0.98, "tikhonov_alpha": 1e-3}),
    ("swudi", {"consensus_power": 1.0, "consensus_floor": 0.2}), ("swudi", {"output_exp_time": 30.0}),
    ("swudi_a", {}), ("swudi_a", {"rank_rule": "entropy"}), ("swudi_a", {"rank_rule": "loss_kneedle"}),
    ("swudi_a", {"rank_rule": "d_aware_participation_sqrt"}), ("swudi_a", {"rank_rule": "loss_elbow_0.99"}),
    ("swudi_a", {"filter_type": "exponential", "t": 300.0}), ("swudi_a", {"filter_type": "wiener"}),
    ("filtered", {"filter": "pseudoinverse", "alpha": None}), ("filtered", {"filter": "exponential", "t": 300.0, "alpha": None}),
    ("filtered", {"filter": "top_k", "ratio": 0.5, "alpha": None}), ("filtered", {"filter": "swudi", "alpha": None}),
    ("filtered", {"filter": "wiener", "alpha": None}), ("filtered", {"filter": "landweber", "eta": 1e-2, "n": 20, "alpha": None}),
    ("filtered", {"filter": "tikhonov", "alpha": 1e-3})]


@pytest.mark.parametrize("name, params", SUBSPACE_RUNS)
@pytest.mark.parametrize("n, d_out, d_in, rank", [(3, 4, 40, 4), (4, 6, 30, 2), (2, 1, 9, 1)])
def test_subspace_path_equals_the_dense_computation(monkeypatch, name, params, n, d_out, d_in, rank):
    """N d_out < d_in: the small solve in the span of the task vectors' rows gives the dense merge and report
    (float64 <= 1e-10 relative), and in float32 it is within 1e-5 of that float64 merge, for every spectral method."""
    from swudi_lab.merge import methods

    taus = task_stack(n=n, d_out=d_out, d_in=d_in, rank=rank)
    small, si = run(name, taus, **params)
    assert si["subspace"] <= n * d_out
    monkeypatch.setattr(methods, "_use_subspace", lambda *shape: False)
    dense, di = run(name, taus, **params)
    assert "subspace" not in di
    assert float((small - dense).norm() / dense.norm()) <= 1e-10
    for key in ("loss_before", "loss_after", "lam_max", "participation", "n_live"):
        assert si[key] == pytest.approx(di[key], rel=1e-9, abs=1e-12), key
    # k counts f != 0: the dense spectrum's round-off "null" eigenvalues (~1e-17 > 0) count for filters with
    # f(lambda) > 0 at every lambda > 0; the subspace path has exact zeros there. Only those may differ.
    assert si["k"] <= di["k"] <= si["k"] + d_in - si["subspace"]
    # float32: within 1e-5 of the float64 merge, or (ill-conditioned methods, where float32 itself is off)
    # no further off than the dense float32 computation
    err = lambda x: float((x.double() - dense).norm() / dense.norm())  # noqa: E731
    small32, _ = run(name, taus.float(), **params)
    monkeypatch.setattr(methods, "_use_subspace", lambda *shape: False)
    dense32, _ = run(name, taus.float(), **params)
    assert err(small32) <= max(1e-5, 1.5 * err(dense32)), (err(small32), err(dense32))
