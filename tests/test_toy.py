"""Toy lab: test problems, synthetic operators, noise models, Picard plot, demo."""

import math

import numpy as np
import pytest
import torch

import swudi_lab  # noqa: F401  (before anything that could import timm)
from swudi_lab.spectral import Eig, filtered_solve, landweber, pseudoinverse, spectral_estimate, svd, top_k
from swudi_lab.toy import (
    PROBLEMS,
    cliff_spectrum,
    deriv2,
    eigen_noise,
    make_problem,
    merge_like_operator,
    merge_proxy,
    noise_variances,
    operator_from_spectrum,
    phillips,
    picard,
    random_merge_proxy,
    random_orthogonal,
    shaw,
    synthetic_operator,
    white_noise,
)
from swudi_lab.toy.demo import format_table, run_toy_demo

# ------------------------------------------------------------------------------------------
# Test problems
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problem_is_consistent_symmetric_and_ill_conditioned(name):
    p = make_problem(name, 32)
    assert p.A.shape == (32, 32) and p.x_true.shape == (32,) and p.grid.shape == (32,)
    assert p.A.dtype == torch.float64
    torch.testing.assert_close(p.b_exact, p.A @ p.x_true)
    torch.testing.assert_close(p.A, p.A.T, rtol=0, atol=1e-14 * p.A.abs().max().item())
    s = torch.linalg.svdvals(p.A)
    assert s[0] / s[-1] > 1e2  # ill-conditioned even at n = 32
    assert torch.all(s[1:] <= s[:-1] * (1 + 1e-12))


def test_severe_problems_have_singular_values_at_round_off():
    for p in (shaw(64), make_problem("gravity", 64)):
        s = torch.linalg.svdvals(p.A)
        assert s[-1] / s[0] < 1e-14  # severely ill-posed: numerically singular


def test_deriv2_singular_values_decay_like_k_to_minus_2():
    s = torch.linalg.svdvals(deriv2(64).A)
    k = torch.arange(1, 65, dtype=torch.float64)
    slope = np.polyfit(np.log(k[:32].numpy()), np.log(s[:32].numpy()), 1)[0]
    assert -2.2 < slope < -1.8


def test_phillips_matches_hansens_closed_form_first_row():
    n = 16
    h, n4 = 12 / n, n // 4
    c = torch.cos(torch.arange(-1, n4 + 1, dtype=torch.float64) * 4 * math.pi / n)
    r1 = torch.zeros(n, dtype=torch.float64)
    r1[:n4] = h + 9 / (h * math.pi**2) * (2 * c[1 : n4 + 1] - c[0:n4] - c[2 : n4 + 2])
    r1[n4] = h / 2 + 9 / (h * math.pi**2) * (math.cos(4 * math.pi / n) - 1)
    torch.testing.assert_close(phillips(n).A[0], r1)


def test_deriv2_entries_are_cell_averages_of_the_kernel():
    n, q = 4, 200  # (1/h) double integral over cells, by a q x q midpoint rule per cell
    h = 1 / n
    A = deriv2(n).A
    for i, j in [(0, 0), (2, 2), (3, 1)]:
        s = (i + (torch.arange(q, dtype=torch.float64) + 0.5) / q) * h
        t = (j + (torch.arange(q, dtype=torch.float64) + 0.5) / q) * h
        S, T = s[:, None], t[None, :]
        K = torch.where(S < T, S * (T - 1), T * (S - 1))
        assert abs(float(K.mean() * h) - float(A[i, j])) < 1e-4 * abs(float(A[i, j]))  # kink: O(1/q)


@pytest.mark.parametrize("build, g", [
    (lambda n: deriv2(n), lambda s: (s**3 - s) / 6),
    (lambda n: deriv2(n, example=2), lambda s: s.exp() + (1 - math.e) * s - 1),
    (lambda n: phillips(n), lambda s: (6 - s.abs()) * (1 + 0.5 * torch.cos(math.pi * s / 3))
     + 9 / (2 * math.pi) * torch.sin(math.pi * s.abs() / 3)),
])
def test_discrete_data_converge_to_the_continuous_right_hand_side(build, g):
    # Galerkin data b_i ~ h^(1/2) g(s_i): the discretization error is O(h^2).
    errs = []
    for n in (32, 64):
        p = build(n)
        h = float(p.grid[1] - p.grid[0])
        ref = math.sqrt(h) * g(p.grid)
        errs.append(float((p.b_exact - ref).norm() / ref.norm()))
    assert errs[1] < 1e-2 and 3.5 < errs[0] / errs[1] < 4.5


def test_problem_bad_inputs():
    for name in PROBLEMS:
        with pytest.raises(ValueError, match="n must be"):
            make_problem(name, 1)
    with pytest.raises(ValueError, match="unknown problem 'nope'"):
        make_problem("nope", 8)
    with pytest.raises(ValueError, match="example"):
        deriv2(8, example=3)


# ------------------------------------------------------------------------------------------
# Synthetic operators
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, params", [("polynomial", {"decay": 1.5}), ("exponential", {"rate": 0.3}),
                                          ("cliff", {"k": 10, "gap": 1e-4})])
def test_synthetic_spectrum_is_the_prescribed_one(kind, params):
    op = synthetic_operator(kind, 40, m=50, seed=3, **params)
    assert op.A.shape == (50, 40)
    s = torch.linalg.svdvals(op.A)
    torch.testing.assert_close(s, op.sigma, rtol=1e-10, atol=1e-14)
    eye = torch.eye(40, dtype=torch.float64)
    torch.testing.assert_close(op.U.T @ op.U, eye)
    torch.testing.assert_close(op.V.T @ op.V, eye)
    torch.testing.assert_close(op.b_exact, op.A @ op.x_true)


def test_spectra_formulas():
    s = cliff_spectrum(20, k=5, gap=1e-3)
    assert float(s[5] / s[4]) == pytest.approx(1e-3 * 2 ** (-1 / 20))
    assert float(s[4] / s[3]) == pytest.approx(2 ** (-1 / 20))
    op = synthetic_operator("polynomial", 8, decay=2.0)
    torch.testing.assert_close(op.sigma, 1 / torch.arange(1, 9, dtype=torch.float64) ** 2)


def test_random_orthogonal_is_seeded():
    Q1, Q2, Q3 = random_orthogonal(12, seed=1), random_orthogonal(12, seed=1), random_orthogonal(12, seed=2)
    assert torch.equal(Q1, Q2) and not torch.allclose(Q1, Q3)
    torch.testing.assert_close(Q1 @ Q1.T, torch.eye(12, dtype=torch.float64))


def test_merge_like_operator_has_a_task_block_and_a_noise_floor():
    N, r = 6, 3
    clean = merge_like_operator(16, 32, N, r, noise=0.0, seed=0)
    assert float(clean.C.trace()) == pytest.approx(N)
    assert torch.all(clean.lam[N * r:].abs() < 1e-12) and torch.all(clean.lam[: N * r] > 1e-4)
    noisy = merge_like_operator(16, 32, N, r, noise=0.05, seed=0)
    assert float(noisy.C.trace()) == pytest.approx(N)
    assert noisy.lam[N * r] > 1e-8 and noisy.lam[N * r - 1] / noisy.lam[N * r] > 10  # the cliff
    torch.testing.assert_close(noisy.Q @ torch.diag(noisy.lam) @ noisy.Q.T, noisy.C)


def test_operator_bad_inputs():
    with pytest.raises(ValueError, match="sigma"):
        operator_from_spectrum([1.0, -0.5])
    with pytest.raises(ValueError, match="m must be"):
        operator_from_spectrum([1.0, 0.5, 0.1], m=2)
    with pytest.raises(ValueError, match="unknown spectrum kind"):
        synthetic_operator("flat", 8)
    with pytest.raises(ValueError, match="gap"):
        cliff_spectrum(8, 2, gap=2.0)
    with pytest.raises(ValueError, match="noise"):
        merge_like_operator(noise=-1)


# ------------------------------------------------------------------------------------------
# Noise models
# ------------------------------------------------------------------------------------------


def test_white_noise_hits_the_requested_level():
    b = torch.linspace(1, 2, 20000, dtype=torch.float64)
    d = white_noise(b, 1e-2, seed=0)
    assert d.noise_norm / float(b.norm()) == pytest.approx(1e-2, rel=0.03)  # chi-square, m = 20000
    torch.testing.assert_close(d.b, b + d.e)
    assert d.std == pytest.approx(1e-2 * float(b.norm()) / math.sqrt(b.numel()))
    snr = white_noise(b, snr_db=40, seed=1)
    assert snr.level == pytest.approx(1e-2) and snr.noise_norm / float(b.norm()) == pytest.approx(1e-2, rel=0.03)
    small = torch.ones(16, dtype=torch.float64)  # average over seeds: E ||e||^2 = level^2 ||b||^2
    ratios = [white_noise(small, 0.1, seed=s).noise_norm ** 2 / (0.01 * 16) for s in range(400)]
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.06)
    exact = white_noise(small, 0.1, seed=0, exact=True)
    assert exact.noise_norm == pytest.approx(0.1 * 4)
    assert torch.equal(white_noise(b, 1e-2, seed=5).e, white_noise(b, 1e-2, seed=5).e)


def test_white_noise_bad_inputs():
    with pytest.raises(ValueError, match="level"):
        white_noise(torch.ones(4), -1e-3)
    with pytest.raises(ValueError, match="exactly one"):
        white_noise(torch.ones(4))
    with pytest.raises(ValueError, match="seed"):
        white_noise(torch.ones(4), 0.1, seed="x")


def test_eigen_noise_has_the_prescribed_variances():
    op = synthetic_operator("exponential", 16, m=24, rate=0.4, seed=0)
    lam = op.sigma**2
    nu2 = noise_variances(lam, s0=0.01, s1=0.5, alpha=1.0)
    torch.testing.assert_close(nu2, 0.01**2 + 0.25 * lam)
    E = eigen_noise(op.U, lam, 0.01, 0.5, 1.0, rows=20000, seed=0)  # (rows, m)
    assert E.shape == (20000, 24)
    var = (E @ op.U).pow(2).mean(dim=0)
    assert torch.allclose(var, nu2, rtol=0.06)
    e = eigen_noise(op.U, lam, 0.01, 0.5, seed=1)
    assert e.shape == (24,)
    with pytest.raises(ValueError, match="lam"):
        eigen_noise(op.U, lam[:3], 0.01)
    with pytest.raises(ValueError, match="s0"):
        noise_variances(lam, -1.0)


def test_merge_proxy_clean_truth_solves_the_normal_equation():
    mp = random_merge_proxy(16, 32, n_tasks=4, rank=3, noise=0.0, seed=0)
    assert float(mp.xi.abs().max()) < 1e-12 * float(mp.D.abs().max())  # D = theta* C
    torch.testing.assert_close(mp.taus, mp.taus_clean)
    theta = spectral_estimate(mp.C, mp.D, None, top_k(k=12), eig=Eig(mp.lam, mp.Q))
    assert mp.error(theta) < 1e-10


def test_merge_proxy_noise_is_amplified_by_the_pseudoinverse():
    mp = random_merge_proxy(16, 32, n_tasks=4, rank=3, noise=0.01, seed=0)
    eig = Eig(mp.lam, mp.Q)
    pinv = spectral_estimate(mp.C, mp.D, None, pseudoinverse(), eig=eig)
    # per direction the pseudoinverse returns r_k + xi_k / lambda_k (docs/design.md)
    torch.testing.assert_close(pinv @ mp.Q, (mp.theta_star @ mp.Q) + (mp.xi @ mp.Q) / mp.lam, rtol=1e-8, atol=1e-10)
    filtered = spectral_estimate(mp.C, mp.D, None, top_k(k=12), eig=eig)
    assert mp.error(filtered) * 10 < mp.error(pinv)
    with pytest.raises(ValueError, match="inputs"):
        merge_proxy(mp.theta_star, torch.ones(2, 5, 7))
    with pytest.raises(ValueError, match="noise"):
        merge_proxy(mp.theta_star, mp.inputs, noise=-0.1)


# ------------------------------------------------------------------------------------------
# Picard plot
# ------------------------------------------------------------------------------------------


def test_picard_ratios_against_known_factors():
    op = synthetic_operator("exponential", 20, m=30, rate=0.3, seed=1)
    b = white_noise(op.b_exact, 1e-3, seed=0).b
    sigma, coef, ratio = picard(op.A, b)
    # the SVD is unique up to signs: compare with the known U, sigma
    torch.testing.assert_close(sigma, op.sigma)
    torch.testing.assert_close(coef, (op.U.T @ b).abs(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ratio, coef / sigma)


def test_picard_condition_holds_for_exact_data_and_fails_for_noisy_data():
    p = shaw(64)
    dec = svd(p.A)
    exact = picard(p.A, p.b_exact, decomposition=dec)
    resolved = exact.sigma > 1e-8 * exact.sigma[0]
    # exact data: ratio_k = |v_k^T x_true| <= ||x_true||, and coefficients decay with sigma
    assert torch.all(exact.ratio[resolved] <= p.x_true.norm() * (1 + 1e-6))
    assert exact.coef[resolved][-1] < 1e-6 * exact.coef[0]
    noisy = picard(None, white_noise(p.b_exact, 1e-3, seed=0).b, decomposition=dec)
    assert noisy.ratio[resolved].max() > 1e3 * p.x_true.norm()  # the noise floor blows up
    with pytest.raises(ValueError, match="b must"):
        picard(p.A, torch.ones(63))


# ------------------------------------------------------------------------------------------
# Filters on a noisy problem: the point of the lab
# ------------------------------------------------------------------------------------------


def test_gradient_descent_semiconverges():
    p = shaw(64)
    dec = svd(p.A)
    b = white_noise(p.b_exact, 1e-3, seed=0).b
    eta = 1 / float(dec.sigma[0]) ** 2
    steps = np.unique(np.round(np.logspace(0, 14, 57)).astype(np.int64)).tolist()
    errs = [float((filtered_solve(p.A, b, landweber(eta, n), decomposition=dec) - p.x_true).norm()) for n in steps]
    best = int(np.argmin(errs))
    assert 0 < best < len(steps) - 1
    assert errs[0] > 2 * errs[best] and errs[-1] > 10 * errs[best]
    # falls, then rises: monotone (up to round-off) on each side of the minimum
    assert all(a >= c * (1 - 1e-9) for a, c in zip(errs[:best], errs[1:best + 1]))


def test_demo_best_filter_beats_pseudoinverse_tenfold():
    rows = run_toy_demo("shaw", 64, 1e-3, seed=0)
    pinv = rows[0]
    assert pinv["filter"] == "pseudoinverse"
    oracle = {r["filter"]: r["error"] for r in rows if r["rule"] == "oracle"}
    assert set(oracle) == {"landweber", "exponential", "tikhonov", "top_k", "swudi", "wiener"}
    assert min(oracle.values()) * 10 < pinv["error"]
    assert all(e * 10 < pinv["error"] for e in oracle.values())
    assert all(r["error"] >= oracle[r["filter"]] * (1 - 1e-9) for r in rows[1:])  # the oracle is the best
    table = format_table(rows)
    assert "tikhonov" in table and "discrepancy" in table
    with pytest.raises(ValueError, match="unknown problem"):
        run_toy_demo("nope")
    with pytest.raises(ValueError, match="noise"):
        run_toy_demo("shaw", noise=-1)
