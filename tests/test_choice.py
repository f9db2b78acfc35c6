"""Parameter choice for A x = b: L-curve, GCV, discrepancy principle, oracle."""

import math
import random

import numpy as np
import pytest
import torch

import swudi_lab  # noqa: F401  (before anything that could import timm)
from swudi_lab.spectral import exponential, filtered_solve, svd, tikhonov, top_k
from swudi_lab.spectral.choice import (_menger_curvature, choose, discrepancy, gcv, l_curve, l_curve_curvature, oracle,
                                      parameter_curves)
from swudi_lab.toy import gravity, shaw, synthetic_operator, white_noise


@pytest.fixture(scope="module")
def noisy_shaw():
    p = shaw(64)
    data = white_noise(p.b_exact, 1e-3, seed=0)
    dec = svd(p.A)
    return p, data, dec, float(dec.sigma[0]) ** 2


def _families(s, n):
    return {
        "tikhonov": (tikhonov, (s * np.logspace(-16, 0, 81)).tolist()),
        "exponential": (lambda t: exponential(t), (np.logspace(0, 16, 81) / s).tolist()),
        "top_k": (lambda k: top_k(k=k), list(range(1, n + 1))),
    }


def test_curves_match_explicit_solutions_on_a_tall_problem():
    op = synthetic_operator("polynomial", 12, m=20, decay=2.0, seed=0)
    b = white_noise(op.b_exact, 1e-2, seed=0).b  # has a component outside range(A)
    alphas = [1e-1, 1e-3, 1e-5]
    curves = parameter_curves(op.A, b, tikhonov, alphas)
    assert curves.params == alphas  # already most regularized first
    for i, a in enumerate(alphas):
        x = filtered_solve(op.A, b, tikhonov(a))
        assert float(curves.solution_norms[i]) == pytest.approx(float(x.norm()), rel=1e-10)
        assert float(curves.residual_norms[i]) == pytest.approx(float((op.A @ x - b).norm()), rel=1e-10)
        lam = op.sigma**2
        assert float(curves.dof[i]) == pytest.approx(float((lam / (lam + a)).sum()), rel=1e-10)


def test_grid_order_does_not_matter(noisy_shaw):
    p, data, dec, s = noisy_shaw
    grid = (s * np.logspace(-12, 0, 25)).tolist()
    shuffled = grid[:]
    random.Random(0).shuffle(shuffled)
    for rule in (lambda g: gcv(p.A, data.b, tikhonov, g, decomposition=dec),
                 lambda g: l_curve(p.A, data.b, tikhonov, g, decomposition=dec),
                 lambda g: discrepancy(p.A, data.b, tikhonov, g, data.noise_norm, decomposition=dec),
                 lambda g: oracle(p.A, data.b, tikhonov, g, p.x_true, decomposition=dec)):
        up, down, mixed = rule(grid), rule(grid[::-1]), rule(shuffled)
        assert up.param == down.param == mixed.param
        assert up.params == sorted(grid, reverse=True)  # most regularized (largest alpha) first
        assert torch.all(up.dof[1:] >= up.dof[:-1])
        torch.testing.assert_close(up.x, down.x)


def test_rules_are_within_a_reasonable_factor_of_the_oracle_on_shaw(noisy_shaw):
    p, data, dec, s = noisy_shaw
    for name, (family, grid) in _families(s, 64).items():
        c = choose(p.A, data.b, family, grid, x_true=p.x_true, noise_norm=data.noise_norm, decomposition=dec)
        err = {rule: float((ch.x - p.x_true).norm() / p.x_true.norm()) for rule, ch in c.items()}
        assert err["oracle"] < 0.1, name
        assert err["gcv"] <= 2 * err["oracle"], name
        assert err["discrepancy"] <= 2 * err["oracle"], name
        assert err["l_curve"] <= 3 * err["oracle"], name


def test_discrepancy_is_robust_across_noise_draws():
    p = shaw(64)
    dec = svd(p.A)
    grid = (float(dec.sigma[0]) ** 2 * np.logspace(-16, 0, 81)).tolist()
    ratios = []
    for seed in range(8):
        data = white_noise(p.b_exact, 1e-3, seed=seed)
        c = choose(p.A, data.b, tikhonov, grid, ("oracle", "discrepancy"), x_true=p.x_true,
                   noise_norm=data.noise_norm, decomposition=dec)
        ratios.append(float((c["discrepancy"].x - p.x_true).norm() / (c["oracle"].x - p.x_true).norm()))
    assert max(ratios) < 2.5


def test_criteria_are_what_they_claim(noisy_shaw):
    p, data, dec, s = noisy_shaw
    grid = (s * np.logspace(-12, 0, 13)).tolist()
    g = gcv(p.A, data.b, tikhonov, grid, decomposition=dec)
    o = oracle(p.A, data.b, tikhonov, grid, p.x_true, decomposition=dec)
    for i, a in enumerate(g.params):
        x = filtered_solve(p.A, data.b, tikhonov(a), decomposition=dec)
        lam = dec.sigma**2
        G = float((p.A @ x - data.b).norm() ** 2 / (64 - (lam / (lam + a)).sum()) ** 2)
        assert float(g.criterion[i]) == pytest.approx(G, rel=1e-6)
        assert float(o.criterion[i]) == pytest.approx(float((x - p.x_true).norm()), rel=1e-8)
    assert int(torch.argmin(g.criterion)) == g.index and int(torch.argmin(o.criterion)) == o.index
    torch.testing.assert_close(g.x, filtered_solve(p.A, data.b, g.filter, decomposition=dec))


def test_discrepancy_picks_the_most_regularized_fit(noisy_shaw):
    p, data, dec, s = noisy_shaw
    grid = list(range(1, 65))
    for tau in (1.0, 1.5):
        d = discrepancy(p.A, data.b, lambda k: top_k(k=k), grid, data.noise_norm, tau, decomposition=dec)
        assert float(d.residual_norms[d.index]) <= tau * data.noise_norm
        assert d.index == 0 or float(d.residual_norms[d.index - 1]) > tau * data.noise_norm
    with pytest.warns(UserWarning, match="no parameter"):
        d = discrepancy(p.A, data.b, lambda k: top_k(k=k), [1, 2, 3], 1e-9, decomposition=dec)
    assert d.param == 3


def test_menger_curvature_of_a_circle():
    # clockwise arc of radius R: the L-corner orientation, curvature +1/R
    R = 2.5
    phi = np.linspace(0.5 * np.pi, 0.0, 40)
    kappa = _menger_curvature(R * np.cos(phi), R * np.sin(phi), min_step=0.0)
    assert np.allclose(kappa[1:-1], 1 / R) and kappa[0] == -math.inf


def test_l_curve_finds_the_corner_of_a_cliff():
    # a spectral gap after K = 10 is a sharp L-curve corner for TSVD
    op = synthetic_operator("cliff", 30, k=10, gap=1e-5, smoothness=0.0, seed=0)
    b = white_noise(op.b_exact, 1e-3, seed=0).b
    c = l_curve(op.A, b, lambda k: top_k(k=k), list(range(1, 31)))
    assert c.param == 10


def test_choose_equals_the_single_rules(noisy_shaw):
    p, data, dec, s = noisy_shaw
    grid = (np.logspace(0, 12, 25) / s).tolist()
    fam = lambda t: exponential(t)  # noqa: E731
    c = choose(p.A, data.b, fam, grid, x_true=p.x_true, noise_norm=data.noise_norm, decomposition=dec)
    assert c["gcv"].param == gcv(p.A, data.b, fam, grid).param
    assert c["l_curve"].param == l_curve(p.A, data.b, fam, grid).param
    assert c["discrepancy"].param == discrepancy(p.A, data.b, fam, grid, data.noise_norm).param
    assert c["oracle"].param == oracle(p.A, data.b, fam, grid, p.x_true).param
    # numpy in, same answer
    g_np = gcv(p.A.numpy(), data.b.numpy(), fam, np.array(grid))
    assert g_np.param == c["gcv"].param


def test_bad_inputs(noisy_shaw):
    p, data, dec, s = noisy_shaw
    with pytest.raises(ValueError, match="b must"):
        gcv(p.A, data.b[:-1], tikhonov, [1e-3])
    with pytest.raises(ValueError, match="params is empty"):
        gcv(p.A, data.b, tikhonov, [])
    with pytest.raises(ValueError, match="family"):
        gcv(p.A, data.b, "tikhonov", [1e-3])
    with pytest.raises(ValueError, match="must return a Filter"):
        gcv(p.A, data.b, lambda a: a, [1e-3])
    with pytest.raises(ValueError, match="noise_norm"):
        discrepancy(p.A, data.b, tikhonov, [1e-3], -1.0)
    with pytest.raises(ValueError, match="tau"):
        discrepancy(p.A, data.b, tikhonov, [1e-3], 1.0, tau=0)
    with pytest.raises(ValueError, match="x_true"):
        oracle(p.A, data.b, tikhonov, [1e-3], p.x_true[:-1])
    with pytest.raises(ValueError, match="at least 3"):
        l_curve(p.A, data.b, tikhonov, [1e-3, 1e-4])
    with pytest.raises(ValueError, match="min_step"):
        l_curve(p.A, data.b, tikhonov, [1e-3, 1e-4, 1e-5], min_step=-1.0)
    with pytest.raises(ValueError, match="unknown rule"):
        choose(p.A, data.b, tikhonov, [1e-3], ("aic",))
    with pytest.raises(ValueError, match="x_true is required"):
        choose(p.A, data.b, tikhonov, [1e-3], ("oracle",))
    with pytest.raises(ValueError, match="alpha"):
        gcv(p.A, data.b, tikhonov, [-1.0])


def _tikhonov_curvature(sigma, beta, outside, alphas):
    """Analytic curvature of the Tikhonov L-curve (log ||A x - b||, log ||x||), as in Hansen's
    Regularization Tools (lcfun): exact derivatives in Hansen's parameter l = sqrt(alpha),
    f = sigma^2 / (sigma^2 + l^2). Sign: the corner is positive. Natural logs (the argmax is the
    same in log10)."""
    sigma, beta = sigma[:, None], beta[:, None]
    l = np.sqrt(np.asarray(alphas, dtype=float))[None, :]
    xi = beta / sigma
    f = sigma**2 / (sigma**2 + l**2)
    cf = 1 - f
    f1 = -2 * f * cf / l  # df/dl
    f2 = -f1 * (3 - 4 * f) / l  # d2f/dl2
    eta = np.sqrt(((f * xi) ** 2).sum(0))
    rho = np.sqrt(((cf * beta) ** 2).sum(0) + outside)
    deta = (f * f1 * xi**2).sum(0) / eta
    drho = -(cf * f1 * beta**2).sum(0) / rho
    ddeta = ((f1**2 + f * f2) * xi**2).sum(0) / eta - deta**2 / eta
    ddrho = -((-(f1**2) + cf * f2) * beta**2).sum(0) / rho - drho**2 / rho
    dle, dlr = deta / eta, drho / rho
    ddle, ddlr = ddeta / eta - dle**2, ddrho / rho - dlr**2
    return (dlr * ddle - ddlr * dle) / (dlr**2 + dle**2) ** 1.5


@pytest.mark.parametrize("problem", [shaw, gravity])
@pytest.mark.parametrize("extent", [(-12, 0), (-16, 0), (-8, -2), (-6, -3.5)])
def test_l_curve_corner_is_the_analytic_maximum_curvature_on_any_grid(problem, extent):
    """200-point Tikhonov grids of different extents, all containing the corner: the pick is within
    one grid step of the maximum of the analytic curvature (the defect: a neighbour distance that
    was a fraction of the whole curve put it tens of steps away on wide grids)."""
    p = problem(64)
    data = white_noise(p.b_exact, 1e-2, seed=0)  # 1 % noise
    dec = svd(p.A, dtype=torch.float64)
    U, sigma, _ = dec
    beta = (U.T @ data.b.double()).numpy()
    outside = float((data.b.double() - U @ (U.T @ data.b.double())).pow(2).sum())
    s = float(sigma[0]) ** 2
    fine = s * np.logspace(-16, 0, 16001)
    kappa = _tikhonov_curvature(sigma.numpy(), beta, outside, fine)
    best = fine[np.argmax(kappa)]
    lo, hi = extent
    grid = s * np.logspace(lo, hi, 200)
    assert grid[0] < best < grid[-1], "the grid contains the maximum-curvature point"
    c = l_curve(p.A, data.b, tikhonov, grid.tolist(), decomposition=dec)
    step = (hi - lo) / 199  # decades per grid step
    assert abs(math.log10(c.param) - math.log10(best)) <= step * (1 + 1e-9), (c.param / s, best / s)
    # the curvature at the pick is the maximum's (not a point far down the curve)
    at_pick = _tikhonov_curvature(sigma.numpy(), beta, outside, [c.param])[0]
    assert at_pick >= 0.9 * kappa.max()


def test_l_curve_curvature_is_local_on_an_arc_and_skips_points_off_the_hull():
    # an L: a quarter circle of radius R bulging to the lower left, walked from the bottom-right arm
    R = 0.5
    phi = np.linspace(0.0, 0.5 * np.pi, 50)
    rho, eta = 1 - R * np.sin(phi), 1 - R * np.cos(phi)
    rho, eta = np.r_[3.0, rho, rho[-1]], np.r_[eta[0], eta, 3.0]  # the two arms
    kappa = l_curve_curvature(rho, eta)
    assert np.allclose(kappa[2:-3], 1 / R, rtol=1e-3)
    # a jagged point inside the L (off the lower convex hull) is never a candidate
    rho2, eta2 = np.insert(rho, 26, rho[26] + 1e-3), np.insert(eta, 26, eta[26] + 1e-3)
    assert kappa.shape[0] + 1 == rho2.shape[0] and l_curve_curvature(rho2, eta2)[26] == -math.inf
    # the value does not depend on how far the arms reach
    far = l_curve_curvature(np.r_[300.0, rho[1:]], np.r_[eta[:-1], 300.0])
    assert np.allclose(far[2:-3], kappa[2:-3])
