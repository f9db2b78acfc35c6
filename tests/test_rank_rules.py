"""Rank rules for SWUDI-A on hand-made spectra with hand-computed K."""

import math

import numpy as np
import pytest
import torch

import swudi_lab  # noqa: F401  (import order: before timm)
from swudi_lab.spectral import RANK_RULES, choose_rank, cumvar, eigh, interference_operator, rank_context

SPECTRUM_RULES = ["participation_sqrt", "participation", "entropy", "entropy_sq", "entropy_sv", "stable_rank",
                  "stable_rank_sv"]
FULL = dict(rhs_energy=[1.0, 0, 0, 0, 0], start_energy=[1.0, 0, 0, 0, 0], n_rows=5, d_out=5)


@pytest.mark.parametrize("rule", SPECTRUM_RULES)
def test_flat_spectrum_gives_d(rule):
    for d in (1, 6, 37):
        assert choose_rank(torch.full((d,), 2.5, dtype=torch.float64), rule) == d
    # flat on 3 of 5 directions: exactly 3, not 4 (ceil must forgive round-off above an integer)
    assert choose_rank([0.7, 0.7, 0.7, 0.0, 0.0], rule) == 3


INFLATING = ("none", "participation_sqrt_plus")  # K > 1 on a single direction, by definition


@pytest.mark.parametrize("rule", [r for r in RANK_RULES if r not in INFLATING] + ["cumvar_0.5", "cumvar_1", "loss_elbow_0.5",
                                                                           "loss_residual_0.5", "wudi_risk_3"])
def test_single_direction_gives_one(rule):
    lam = [1.0, 0.0, 0.0, 0.0, 0.0]
    assert choose_rank(lam, rule, **FULL) == 1
    assert choose_rank(lam, "none", **FULL) == 5
    assert choose_rank(lam, "participation_sqrt_plus", **FULL) == 2  # 1 * (1 + 1 / ln(5 + e)) = 1.49 -> 2


def test_hand_computed_spectrum():
    # lam = [9, 4, 1, 0], sqrt(lam) = [3, 2, 1, 0]
    lam = [9.0, 4.0, 1.0, 0.0]
    assert choose_rank(lam, "none") == 4
    # participation_sqrt: (3 + 2 + 1)^2 / 14 = 36 / 14 = 2.57 -> 3
    assert choose_rank(lam, "participation_sqrt") == 3
    # participation: 14^2 / (81 + 16 + 1) = 196 / 98 = 2 exactly -> 2
    assert choose_rank(lam, "participation") == 2
    # entropy (authors', p = lam / 14 = [9, 4, 1] / 14): H = 0.2840 + 0.3579 + 0.1885 = 0.8305,
    # exp(H) = 2.294 -> 3
    assert choose_rank(lam, "entropy") == 3
    # entropy_sq (p = lam^2 / 98 = [81, 16, 1] / 98): H = 0.1575 + 0.2959 + 0.0468 = 0.5002, exp = 1.649 -> 2
    assert choose_rank(lam, "entropy_sq") == 2
    # entropy_sv (swudi_lab's, p = sqrt(lam) / 6 = [1/2, 1/3, 1/6]): H = 1.0114, exp(H) = 2.749 -> 3
    assert choose_rank(lam, "entropy_sv") == 3
    # cumvar: shares 9/14 = 0.643, 13/14 = 0.929, 1 -> 0.6 needs 1, 0.9 needs 2, 0.95 needs 3
    assert [choose_rank(lam, f"cumvar_{x}") for x in (0.6, 0.9, 0.95)] == [1, 2, 3]
    # loss_kneedle with g = lam: shares - K/4 = [0.393, 0.429, 0.25, 0] -> 2
    assert choose_rank(lam, "loss_kneedle") == 2
    # participation_sqrt_plus on d = 8 (four more zeros): 2.5714 (1 + 1 / ln(8 + e)) = 2.5714 * 1.4216 = 3.656 -> 4
    assert choose_rank(lam + [0.0] * 4, "participation_sqrt_plus") == 4
    # the rules see the spectrum descending whatever the input order, torch or numpy
    assert choose_rank(np.array([1.0, 0.0, 9.0, 4.0]), "participation_sqrt") == 3


def test_stable_ranks_by_hand():
    lam = [4.0, 2.0, 2.0, 2.0]
    # stable_rank (authors', of C): (16 + 4 + 4 + 4) / 16 = 1.75 -> 2
    assert choose_rank(lam, "stable_rank") == 2
    # stable_rank_sv (swudi_lab's, of T): (4 + 2 + 2 + 2) / 4 = 2.5 -> 3
    assert choose_rank(lam, "stable_rank_sv") == 3


def test_participation_sqrt_c2_by_hand():
    # sqrt(lam) = [4, 4, 4, 2, 0.5, 0, 0, 0]: (14.5)^2 / 52.25 = 4.024 -> K0 = 5;
    # top 5: mean 2.9, population variance (3 * 1.21 + 0.81 + 5.76) / 5 = 2.04, c^2 = 2.04 / 8.41 = 0.2426
    lam = [16.0, 16.0, 16.0, 4.0, 0.25, 0.0, 0.0, 0.0]
    assert choose_rank(lam, "participation_sqrt") == 5
    assert choose_rank(lam, "participation_sqrt_c2") == 7  # 1.2426 * 5 = 6.21 -> 7
    assert choose_rank(lam, "participation_sqrt_c2_half") == 6  # 1.1213 * 5 = 5.61 -> 6
    # K0 < 2: unchanged
    assert choose_rank([1.0, 0.0, 0.0], "participation_sqrt_c2") == 1


def test_d_aware_rules_by_hand():
    # e_k = ||D q_k||^2 / lambda_k^2 = [16 / 16, 0, 0, (9 / 256) / (1 / 256)] = [1, 0, 0, 9]:
    # the closed form's energy sits in the smallest direction
    lam, rhs = [4.0, 1.0, 0.25, 0.0625], [16.0, 0.0, 0.0, 9 / 256]
    # participation of sqrt(e): (1 + 3)^2 / 10 = 1.6 -> 2
    assert choose_rank(lam, "d_aware_participation_sqrt", rhs_energy=rhs) == 2
    # cumulative e = [1, 1, 1, 10] / 10: 0.99 is reached at K = 4
    assert choose_rank(lam, "d_aware_cumvar", rhs_energy=rhs) == 4
    # entropy of [0.1, 0.9]: H = 0.3251, exp = 1.384 -> 2
    assert choose_rank(lam, "d_aware_entropy", rhs_energy=rhs) == 2
    # lambda below 1e-8 is clamped there: e = 1e-16 / 1e-16 = 1 for the null direction
    assert choose_rank([1.0, 0.0], "d_aware_participation_sqrt", rhs_energy=[1.0, 1e-16]) == 2


def test_loss_rules_by_hand():
    # lam = [1, 1, 0.01, 0.01], a = ||theta0 q_k||^2 = 1, e' = ||D q_k||^2 = [1, 1, 1e-3, 1e-3]
    # l = lam^2 a + e' = [2, 2, 1.1e-3, 1.1e-3]; L_fit(K) for K = 0..4: 4.0022, 2.0022, 0.0022, 0.0011, 0
    # e' / lam^2 = [1, 1, 10, 10]; L_norm(K) for K = 1..4: 1 + 3 = 4, 2 + 2 = 4, 12 + 1 = 13, 22
    ctx = dict(rhs_energy=[1.0, 1.0, 1e-3, 1e-3], start_energy=[1.0, 1.0, 1.0, 1.0])
    lam = [1.0, 1.0, 0.01, 0.01]
    # loss_elbow (0.01): L_fit / L_fit(0) = 0.5003, 5.5e-4 -> K = 2
    assert choose_rank(lam, "loss_elbow", **ctx) == 2
    # loss_elbow_0.0005: 5.497e-4 > 5e-4 at K = 2, 2.748e-4 at K = 3 -> 3
    assert choose_rank(lam, "loss_elbow_0.0005", **ctx) == 3
    # loss_residual_0.4: 1 - 0.4 = 0.6 >= 0.5003 -> 1; loss_residual_0.99 is loss_elbow
    assert choose_rank(lam, "loss_residual_0.4", **ctx) == 1
    assert choose_rank(lam, "loss_residual_0.99", **ctx) == 2
    # wudi_risk (rho 1): 2.0022 + 4 = 6.00, 0.0022 + 4 = 4.00, 0.0011 + 13, 0 + 22 -> 2
    assert choose_rank(lam, "wudi_risk", **ctx) == 2
    # rho = 1e-5: 2.0022, 0.00224, 0.00123, 0.00022 -> 4
    assert choose_rank(lam, "wudi_risk_1e-05", **ctx) == 4
    # rhs_energy and start_energy travel with their eigenvalue when the input is not sorted
    perm = [2, 0, 3, 1]
    shuffled = {k: [v[i] for i in perm] for k, v in ctx.items()}
    assert choose_rank([lam[i] for i in perm], "wudi_risk", **shuffled) == 2
    assert choose_rank([lam[i] for i in perm], "loss_elbow_0.0005", **shuffled) == 3


def test_hand_computed_entropy_value():
    p = np.array([3.0, 2.0, 1.0]) / 6
    erank = math.exp(-(p * np.log(p)).sum())
    assert 2.74 < erank < 2.75 and choose_rank([9.0, 4.0, 1.0], "entropy_sv") == math.ceil(erank)


def test_cumvar_boundaries_are_inclusive():
    lam = [1.0, 1.0, 1.0, 1.0]  # shares 0.25, 0.5, 0.75, 1
    assert [choose_rank(lam, f"cumvar_{x}") for x in (0.25, 0.5, 0.75, 0.76, 1.0)] == [1, 2, 3, 4, 4]
    assert cumvar(0.5)(torch.tensor(lam, dtype=torch.float64)) == 2


def test_gavish_donoho_by_hand():
    # sigma = [10, 5, 2, 1, 1] (lam = sigma^2), median(sigma) = 2
    lam = [100.0, 25.0, 4.0, 1.0, 1.0]
    # beta = 1: omega = 0.56 - 0.95 + 1.82 + 1.43 = 2.86, tau = 5.72 -> only sigma = 10 passes
    assert choose_rank(lam, "gavish_donoho") == 1
    # beta = 0.5: omega = 0.07 - 0.2375 + 0.91 + 1.43 = 2.1725, tau = 4.345 -> 10 and 5 pass
    assert choose_rank(lam, "gavish_donoho", aspect=0.5) == 2
    # an even count: the median of sigma = [20, 10, 3, 3] is 6.5, tau = 18.59 -> 1
    # (torch's lower median, 3, would give tau = 8.58 -> 2)
    assert choose_rank([400.0, 100.0, 9.0, 9.0], "gavish_donoho") == 1
    # d_in = 12 > n_rows = 6: six structural zeros; the median runs over the 6 singular values
    # [20, 10, 2, 2, 1, 1] (2), beta = 6 / 12 = 0.5: tau = 2.1725 * 2 = 4.345 -> 2
    # (over all 12 values the median would be 0.5, tau = 1.09 -> 4)
    lam = [400.0, 100.0, 4.0, 4.0, 1.0, 1.0] + [0.0] * 6
    assert choose_rank(lam, "gavish_donoho", n_rows=6) == 2
    assert choose_rank(lam, "gavish_donoho", aspect=0.5) == 4
    with pytest.raises(ValueError, match="contradicts n_rows"):
        choose_rank(lam, "gavish_donoho", n_rows=6, aspect=1.0)


def test_gavish_donoho_authors_by_hand():
    # sigma = [10, 5, 4, 3, 2, 2, 1], median 3
    lam = [100.0, 25.0, 16.0, 9.0, 4.0, 4.0, 1.0]
    # d_out = 7 = d_in: beta = 1, mu = sqrt(2 + sqrt 3) = 1.9319, lambda* = sqrt(4 + 8 / 6) = 2.3094:
    # tau = 1.1954 * 3 = 3.586 -> 10, 5, 4 pass
    assert choose_rank(lam, "gavish_donoho_authors", d_out=7) == 3
    # d_out = 70: beta = 0.1, mu = sqrt(0.81 + 0.1) = 0.9539, lambda* = sqrt(2.2 + 0.8 / (1.1 + sqrt 2.41))
    # = 1.5816: tau = 1.6580 * 3 = 4.974 -> 10, 5 pass
    assert choose_rank(lam, "gavish_donoho_authors", d_out=70) == 2
    # the textbook rule on the same spectrum: 2.86 * 3 = 8.58 -> 1
    assert choose_rank(lam, "gavish_donoho") == 1
    # eigenvalues are clamped at 1e-8 (sigma 1e-4) and K >= 1
    assert choose_rank([100.0, 0.0, 0.0], "gavish_donoho_authors", d_out=3) == 1
    with pytest.raises(ValueError, match="d_out"):
        choose_rank(lam, "gavish_donoho_authors")


def _mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law of aspect ratio beta (numerically, as optht does)."""
    from scipy import integrate, optimize

    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    density = lambda x: math.sqrt((hi - x) * (x - lo)) / (2 * math.pi * beta * x)  # noqa: E731
    return optimize.brentq(lambda m: integrate.quad(density, lo, m)[0] - 0.5, lo, hi, xtol=1e-12)


def _optht_rank(T: torch.Tensor) -> int:
    """Gavish & Donoho's optimal hard threshold for unknown noise, omega from the MP median."""
    sigma = torch.linalg.svdvals(T).numpy()
    m, n = T.shape
    beta = min(m, n) / max(m, n)
    lam_star = math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))
    omega = lam_star / math.sqrt(_mp_median(beta))
    return int((sigma > omega * np.median(sigma)).sum())


@pytest.mark.parametrize("n, d_out, d_in, rank", [
    (4, 64, 128, 8),   # N d_out = 256 > d_in
    (4, 32, 128, 8),   # square stacked matrix, beta = 1
    (8, 16, 64, 6),    # N d_out = 128 > d_in
    (2, 16, 96, 6),    # d_in = 96 > N d_out = 32: 64 structural zeros in C
    (4, 8, 128, 6),    # d_in = 128 > N d_out = 32
])
def test_gavish_donoho_matches_an_optimal_hard_threshold(n, d_out, d_in, rank):
    g = torch.Generator().manual_seed(d_in + 7 * n)
    for trial in range(3):
        rows = n * d_out
        U = torch.linalg.qr(torch.randn(rows, rank, generator=g, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(d_in, rank, generator=g, dtype=torch.float64))[0]
        bulk = math.sqrt(rows) + math.sqrt(d_in)  # noise bulk edge for unit-variance entries
        s = bulk * torch.linspace(1.3, 4.0, rank, dtype=torch.float64)
        X = (U * s) @ V.T + torch.randn(rows, d_in, generator=g, dtype=torch.float64)
        taus = X.reshape(n, d_out, d_in)
        C, _ = interference_operator(taus)
        T = (taus / taus.pow(2).sum(dim=(1, 2)).sqrt().view(-1, 1, 1)).reshape(rows, d_in)  # C = T^T T
        reference = _optht_rank(T)
        K = choose_rank(torch.linalg.eigvalsh(C), "gavish_donoho", n_rows=rows)
        assert abs(K - reference) <= 1, (trial, K, reference)
        assert abs(reference - rank) <= 2  # the reference itself finds the planted rank


@pytest.mark.parametrize("rule", SPECTRUM_RULES + ["cumvar_0.9", "gavish_donoho", "loss_kneedle",
                                                   "participation_sqrt_c2", "participation_sqrt_plus"])
def test_spectrum_rules_are_scale_free(rule):
    lam = torch.logspace(0, -4, 50, dtype=torch.float64)
    assert choose_rank(lam, rule) == choose_rank(1e3 * lam, rule) == choose_rank(1e-2 * lam, rule)


def test_every_rule_on_a_real_layer_spectrum():
    g = torch.Generator().manual_seed(0)
    taus = torch.randn(3, 4, 20, generator=g, dtype=torch.float64)  # rank(C) <= 12 < d_in = 20
    ctx = rank_context(taus)
    assert ctx["n_rows"] == 12 and ctx["d_out"] == 4
    C, D = interference_operator(taus)
    lam, V = eigh(C)
    torch.testing.assert_close(ctx["rhs_energy"], (D @ V).pow(2).sum(0))
    torch.testing.assert_close(ctx["start_energy"], (taus.sum(0) @ V).pow(2).sum(0))
    for rule in RANK_RULES:
        K = choose_rank(lam, rule, **ctx)
        # rank(C) = 12 bounds K except for the rules that inflate the participation ratio
        bound = 20 if rule in INFLATING + ("participation_sqrt_c2", "participation_sqrt_c2_half") else 12
        assert isinstance(K, int) and 1 <= K <= bound, (rule, K)


def test_clamps_and_all_zero_spectrum():
    flat = [1.0] * 6
    assert choose_rank([1.0, 0, 0, 0, 0], min_rank=3) == 3
    assert choose_rank(flat, max_rank_ratio=0.5) == 3
    assert choose_rank([1.0] * 100, max_rank_ratio=0.07) == 7  # round(0.07 * 100) = 7, not 8
    assert choose_rank([1.0] * 5, max_rank_ratio=0.5) == 2  # round(2.5) = 2 (half to even), as the authors
    assert choose_rank(flat, min_rank=10) == 6  # never above d
    assert choose_rank(flat, min_rank=5, max_rank_ratio=0.5) == 5  # upper = max(min_rank, round(3)) = 5
    assert choose_rank([0.0, 0.0, 0.0], min_rank=2) == 2
    assert choose_rank([0.0, 0.0, 0.0]) == 1
    assert choose_rank([-1e-17, 1.0, 0.0], "participation") == 1  # round-off negatives clipped


def test_rank_scale():
    flat = [1.0] * 10  # participation_sqrt: K = 10
    assert [choose_rank(flat, rank_scale=s) for s in (0.5, 0.25, 0.35, 2.0)] == [5, 2, 4, 10]  # round(2.5) = 2
    assert choose_rank(flat, rank_scale=0.01, min_rank=3) == 3  # round(0.1) = 0 -> min_rank
    assert choose_rank(flat, max_rank_ratio=0.5, rank_scale=1.5) == 8  # clamp to 5 first, then round(7.5) = 8


@pytest.mark.parametrize("kwargs, name", [
    (dict(lam=[[1.0, 2.0]]), "lam"),
    (dict(lam=[]), "lam"),
    (dict(lam=[1.0, float("nan")]), "lam"),
    (dict(lam=[1.0, float("inf")]), "lam"),
    (dict(lam=[1.0], rule="nope"), "participation_sqrt"),  # lists the known rules
    (dict(lam=[1.0], rule="cumvar_1.5"), "cumvar"),
    (dict(lam=[1.0], rule="cumvar_0"), "cumvar"),
    (dict(lam=[1.0], rule="cumvar_abc"), "cumvar"),
    (dict(lam=[1.0], max_rank_ratio=0.0), "max_rank_ratio"),
    (dict(lam=[1.0], max_rank_ratio=1.5), "max_rank_ratio"),
    (dict(lam=[1.0], min_rank=0), "min_rank"),
    (dict(lam=[1.0], min_rank=1.5), "min_rank"),
    (dict(lam=[1.0, 0.5], rule="wudi_risk"), "rhs_energy"),
    (dict(lam=[1.0, 0.5], rule="wudi_risk", rhs_energy=[1.0, 1.0]), "start_energy"),
    (dict(lam=[0.0, 0.0], rule="wudi_risk"), "rhs_energy"),
    (dict(lam=[1.0, 0.5], rule="wudi_risk", rhs_energy=[1.0]), "rhs_energy"),
    (dict(lam=[1.0, 0.5], rule="wudi_risk", rhs_energy=[1.0, -1.0]), "rhs_energy"),
    (dict(lam=[1.0, 0.5], rule="wudi_risk_scalefree"), "rhs_energy"),
    (dict(lam=[1.0, 0.5], rule="d_aware_entropy"), "rhs_energy"),
    (dict(lam=[1.0], rule="wudi_risk_0"), "wudi_risk rho"),
    (dict(lam=[1.0], rule="wudi_risk_x"), "wudi_risk rho"),
    (dict(lam=[1.0], rule="loss_elbow_1"), "loss_elbow fraction"),
    (dict(lam=[1.0], rule="loss_residual_0"), "loss_residual fraction"),
    (dict(lam=[1.0], rank_scale=0.0), "rank_scale"),
    (dict(lam=[1.0], n_rows=0), "n_rows"),
    (dict(lam=[1.0], d_out=1.5), "d_out"),
    (dict(lam=[1.0, 0.5], rule="gavish_donoho", aspect=0.0), "aspect"),
    (dict(lam=[1.0, 0.5], rule="gavish_donoho", aspect=2.0), "aspect"),
])
def test_bad_input_raises_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        choose_rank(**kwargs)


def test_cumvar_factory_validates():
    with pytest.raises(ValueError, match="cumvar"):
        cumvar(0.0)
    assert cumvar(0.9).__name__ == "cumvar_0.9"
