"""Rank rules for SWUDI-A on hand-made spectra with hand-computed K."""

import math

import numpy as np
import pytest
import torch

import swudi_lab  # noqa: F401  (import order: before timm)
from swudi_lab.spectral import RANK_RULES, choose_rank, cumvar, eigh, interference_operator

SPECTRUM_RULES = ["participation_sqrt", "participation", "entropy", "entropy_sq", "stable_rank"]


@pytest.mark.parametrize("rule", SPECTRUM_RULES)
def test_flat_spectrum_gives_d(rule):
    for d in (1, 6, 37):
        assert choose_rank(torch.full((d,), 2.5, dtype=torch.float64), rule) == d
    # flat on 3 of 5 directions: exactly 3, not 4 (ceil must forgive round-off above an integer)
    assert choose_rank([0.7, 0.7, 0.7, 0.0, 0.0], rule) == 3


@pytest.mark.parametrize("rule", list(RANK_RULES) + ["cumvar_0.5", "cumvar_1"])
def test_single_direction_gives_one(rule):
    lam = [1.0, 0.0, 0.0, 0.0, 0.0]
    assert choose_rank(lam, rule, rhs_energy=[1.0, 0, 0, 0, 0]) == 1


def test_hand_computed_spectrum():
    # lam = [9, 4, 1, 0], sqrt(lam) = [3, 2, 1, 0]
    lam = [9.0, 4.0, 1.0, 0.0]
    # participation_sqrt: (3 + 2 + 1)^2 / 14 = 36 / 14 = 2.57 -> 3
    assert choose_rank(lam, "participation_sqrt") == 3
    # participation: 14^2 / (81 + 16 + 1) = 196 / 98 = 2 exactly -> 2
    assert choose_rank(lam, "participation") == 2
    # stable_rank: 14 / 9 = 1.56 -> 2
    assert choose_rank(lam, "stable_rank") == 2
    # entropy: p = [1/2, 1/3, 1/6], H = 1.0114, exp(H) = 2.749 -> 3
    assert choose_rank(lam, "entropy") == 3
    # entropy_sq: p = [9, 4, 1] / 14, H = 0.8305, exp(H) = 2.294 -> 3
    assert choose_rank(lam, "entropy_sq") == 3
    # cumvar: shares 9/14 = 0.643, 13/14 = 0.929, 1 -> 0.6 needs 1, 0.9 needs 2, 0.95 needs 3
    assert [choose_rank(lam, f"cumvar_{x}") for x in (0.6, 0.9, 0.95)] == [1, 2, 3]
    # loss_elbow with g = lam: shares - K/4 = [0.393, 0.429, 0.25, 0] -> 2
    assert choose_rank(lam, "loss_elbow") == 2
    # the rules see the spectrum descending whatever the input order, torch or numpy
    assert choose_rank(np.array([1.0, 0.0, 9.0, 4.0]), "participation_sqrt") == 3


def test_hand_computed_entropy_value():
    p = np.array([3.0, 2.0, 1.0]) / 6
    erank = math.exp(-(p * np.log(p)).sum())
    assert 2.74 < erank < 2.75 and choose_rank([9.0, 4.0, 1.0], "entropy") == math.ceil(erank)


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


def test_wudi_risk_by_hand():
    # lam = [1, 1, 0.01, 0.01], ||D q_k||^2 = [1, 1, 1e-3, 1e-3]
    # g = e / lam = [1, 1, 0.1, 0.1] (sum 2.2), h = e / lam^2 = [1, 1, 10, 10] (sum 22)
    # risk(1) = 1.2/2.2 + 1/22 = 0.591, risk(2) = 0.2/2.2 + 2/22 = 0.182,
    # risk(3) = 0.1/2.2 + 12/22 = 0.591, risk(4) = 0 + 1 = 1  ->  K = 2
    lam, e = [1.0, 1.0, 0.01, 0.01], [1.0, 1.0, 1e-3, 1e-3]
    assert choose_rank(lam, "wudi_risk", rhs_energy=e) == 2
    # rhs_energy travels with its eigenvalue when the input is not sorted
    perm = [2, 0, 3, 1]
    assert choose_rank([lam[i] for i in perm], "wudi_risk", rhs_energy=[e[i] for i in perm]) == 2
    # clean signal (e = lam^2: g = lam, h = 1) keeps only the dominant direction:
    # risk(1) = 1.25/5.25 + 1/3 = 0.571 < risk(2) = 0.714 < risk(3) = 1
    assert choose_rank([4.0, 1.0, 0.25], "wudi_risk", rhs_energy=[16.0, 1.0, 0.0625]) == 1


def test_loss_elbow_uses_rhs_energy():
    lam = [1.0, 1.0, 0.01, 0.01]
    # g = e / lam = [1, 1, 0.1, 0.1]: shares - K/4 = [0.205, 0.409, 0.205, 0] -> 2
    assert choose_rank(lam, "loss_elbow", rhs_energy=[1.0, 1.0, 1e-3, 1e-3]) == 2
    # g = e / lam = [1, 1, 1, 1]: the curve is the chord, ties pick the smallest K
    assert choose_rank(lam, "loss_elbow", rhs_energy=[1.0, 1.0, 0.01, 0.01]) == 1


@pytest.mark.parametrize("rule", SPECTRUM_RULES + ["cumvar_0.9", "gavish_donoho", "loss_elbow"])
def test_spectrum_rules_are_scale_free(rule):
    lam = torch.logspace(0, -4, 50, dtype=torch.float64)
    assert choose_rank(lam, rule) == choose_rank(1e3 * lam, rule) == choose_rank(1e-2 * lam, rule)


def test_every_rule_on_a_real_layer_spectrum():
    g = torch.Generator().manual_seed(0)
    taus = torch.randn(3, 4, 20, generator=g, dtype=torch.float64)  # rank(C) <= 12 < d_in = 20
    C, D = interference_operator(taus)
    lam, V = eigh(C)
    e = (D @ V).pow(2).sum(0)
    for rule in RANK_RULES:
        K = choose_rank(lam, rule, rhs_energy=e, aspect=12 / 20)
        assert isinstance(K, int) and 1 <= K <= 12, (rule, K)


def test_clamps_and_all_zero_spectrum():
    flat = [1.0] * 6
    assert choose_rank([1.0, 0, 0, 0, 0], min_rank=3) == 3
    assert choose_rank(flat, max_rank_ratio=0.5) == 3
    assert choose_rank([1.0] * 100, max_rank_ratio=0.07) == 7  # ceil(0.07 * 100) = 7, not 8
    assert choose_rank(flat, min_rank=10) == 6  # never above d
    assert choose_rank(flat, min_rank=5, max_rank_ratio=0.5) == 3  # the upper clamp wins
    assert choose_rank([0.0, 0.0, 0.0], min_rank=2) == 2
    assert choose_rank([0.0, 0.0, 0.0]) == 1
    assert choose_rank([-1e-17, 1.0, 0.0], "participation") == 1  # round-off negatives clipped


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
    (dict(lam=[0.0, 0.0], rule="wudi_risk"), "rhs_energy"),
    (dict(lam=[1.0, 0.5], rule="wudi_risk", rhs_energy=[1.0]), "rhs_energy"),
    (dict(lam=[1.0, 0.5], rule="wudi_risk", rhs_energy=[1.0, -1.0]), "rhs_energy"),
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
